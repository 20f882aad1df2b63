#!/usr/bin/env bash
# conveyor serve's two engines under wrk (Debian's), in one run: single POST /jobs with 32
# keep-alive connections and POST /jobs/batch of 1,000 jobs with 8, 10 s each, twice; with a
# commit given, that commit's server (hypercorn on trio before issue #16) is measured too.
#
#     bench/http_engines.sh            # this checkout, --engine trio and asyncio
#     bench/http_engines.sh d56f351    # ... and the server of commit d56f351
#     ACCESS_LOG=1 bench/http_engines.sh   # with serve's access log (on by default; off here)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'cd /; [ -d "$work/before" ] && git -C "$root" worktree remove --force "$work/before"; rm -rf "$work"' EXIT
bash "$root/bench/http_fixtures.sh" "$work"
if [ $# -ge 1 ]; then git -C "$root" worktree add -q "$work/before" "$1"; fi
log_flag=$([ -n "${ACCESS_LOG:-}" ] && echo --access-log || echo --no-access-log)

run() {  # label pythonpath script connections jobs-per-request serve-args...
    local label=$1 path=$2 script=$3 connections=$4 per=$5; shift 5
    local port=$((20000 + RANDOM % 20000))
    rm -f "$work"/load.db*
    (cd "$work" && exec env PYTHONPATH="$path" "$root/.venv/bin/conveyor" serve --db load.db \
        --handlers load_handlers:registry --port "$port" "$log_flag" "$@" \
        > "$work/serve.log" 2>&1) &
    local server=$!
    sleep 4
    local rate
    rate=$(wrk -t1 -c"$connections" -d10s -s "$work/$script" "http://127.0.0.1:$port/" \
        | awk '/Requests\/sec/ {print $2}')
    printf '%-34s %10.0f jobs/s\n' "$label" "$(echo "$rate * $per" | bc)"
    kill "$server"; wait "$server" || true
}
for round in 1 2; do
    if [ $# -ge 1 ]; then run "$1 POST /jobs" "$work/before/src" single.lua 32 1; fi
    run "trio POST /jobs" "" single.lua 32 1 --engine trio
    run "asyncio POST /jobs" "" single.lua 32 1 --engine asyncio
    if [ $# -ge 1 ]; then run "$1 POST /jobs/batch" "$work/before/src" batch.lua 8 1000; fi
    run "trio POST /jobs/batch" "" batch.lua 8 1000 --engine trio
    run "asyncio POST /jobs/batch" "" batch.lua 8 1000 --engine asyncio
done
