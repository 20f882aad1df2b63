#!/usr/bin/env bash
# One HTTP load against the server of an older commit and of this checkout, alternating, with
# each server's CPU time (user + system, from /proc) per job: wrk (Debian's), 8 s a run, the
# default engine, a no-op handler and the default 4 workers, as bench/http_engines.sh.
#
#     bench/http_ab.sh 05bcb05 batch 3     # POST /jobs/batch of 1,000 jobs, 8 connections, 3 rounds
#     bench/http_ab.sh 05bcb05 single 3    # POST /jobs, 32 connections
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rev=$1 kind=$2 rounds=${3:-3}
work=$(mktemp -d)
trap 'cd /; git -C "$root" worktree remove --force "$work/before" 2>/dev/null || true; rm -rf "$work"' EXIT
bash "$root/bench/http_fixtures.sh" "$work"
case $kind in
    batch) connections=8 per=1000 ;;
    single) connections=32 per=1 ;;
    *) echo "the load is batch or single, not $kind" >&2; exit 2 ;;
esac
git -C "$root" worktree add -q "$work/before" "$rev"

run() {  # pythonpath: prints "jobs/s, CPU µs a job"
    local port=$((20000 + RANDOM % 20000))
    rm -f "$work"/load.db*
    (cd "$work" && exec env PYTHONPATH="$1" "$root/.venv/bin/conveyor" serve --db load.db \
        --handlers load_handlers:registry --port "$port" --no-access-log > "$work/serve.log" 2>&1) &
    local server=$!
    sleep 4
    local before after rate
    before=$(awk '{print $14 + $15}' "/proc/$server/stat")
    rate=$(wrk -t1 -c"$connections" -d8s -s "$work/$kind.lua" "http://127.0.0.1:$port/" \
        | awk '/Requests\/sec/ {print $2}')
    after=$(awk '{print $14 + $15}' "/proc/$server/stat")
    kill "$server"; wait "$server" || true
    python3 -c "r = $rate * $per; print(f'{r:8.0f} jobs/s {($after - $before) / $(getconf CLK_TCK) * 1e6 / (r * 8):6.1f} µs CPU a job', end='')"
}
for round in $(seq "$rounds"); do
    echo "round $round: $rev $(run "$work/before/src")   now $(run "")"
done
