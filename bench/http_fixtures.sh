#!/usr/bin/env bash
# Writes into the folder $1 what the HTTP loads use: load_handlers.py (a no-op handler) and
# wrk's scripts single.lua (POST /jobs of one job) and batch.lua (POST /jobs/batch of 1,000).
set -euo pipefail
cat > "$1/load_handlers.py" <<'PY'
import conveyor
registry = conveyor.Registry()

@registry.handler
async def noop(payload):
    return None
PY
python3 - "$1" <<'PY'
import json, sys
work = sys.argv[1]
def script(path, body):
    return (f'wrk.method = "POST"\nwrk.path = "{path}"\nwrk.body = [[{json.dumps(body)}]]\n'
            'wrk.headers["Content-Type"] = "application/json"\n')
open(f"{work}/single.lua", "w").write(script("/jobs", {"name": "noop", "payload": {"n": 1}}))
jobs = [{"name": "noop", "payload": {"n": i}} for i in range(1000)]
open(f"{work}/batch.lua", "w").write(script("/jobs/batch", {"jobs": jobs}))
PY
