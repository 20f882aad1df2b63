"""Run every peer benchmark in turn; write results.md and results.png (issue #5).

    python bench/peers/run_all.py [--quick] [--systems a,b] [--runs 3] [--timeout S]
    python bench/peers/run_all.py --render a.json,b.json   # tables from saved runs

Run it with the interpreter of the bench virtualenv (the peers are installed there,
never in the project's own environment).  By hand only, never in CI.

Each system x measure x run is one subprocess ``python <system>_peer.py --measure M``
with a hard timeout; its last stdout line is one JSON object (see common.py).  Every
figure is the median over the runs that succeeded.  Every peer has two rows: ``<peer>``
at its defaults and ``<peer>_tuned`` (the same script with ``--tuned``) at the best
settings its documentation gives for this workload; conveyor's ratios are taken against
the better of the two.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import common

OURS = ["conveyor", "conveyor_tuned", "conveyor_http"]
# The peers in table order; each runs twice, at its defaults and tuned.
PEERS = [
    "huey",
    "persistqueue",
    "litequeue",
    "taskito",
    "procrastinate",
    "arq",
    "saq",
    "rq",
    "streaq",
    "dramatiq",
]
# The one list of systems, in table order.  conveyor's rows are included when
# their scripts exist (they follow the same protocol as every other peer).
SYSTEMS: list[str] = OURS + [row for p in PEERS for row in (p, p + common.TUNED_SUFFIX)]
# Why a system has no script here; its row says so instead of being left out.
MISSING = {
    "conveyor_http": "conveyor over HTTP needs `conveyor serve` (the service of issue #4), "
    "which was not usable when this ran",
}
REDIS_SYSTEMS = {"arq", "saq", "rq", "streaq", "dramatiq"}

HERE = Path(__file__).resolve().parent


def is_tuned(system: str) -> bool:
    return system.endswith(common.TUNED_SUFFIX)


def base(system: str) -> str:
    """The system a row belongs to: ``huey`` for ``huey`` and ``huey_tuned``."""
    return system.removesuffix(common.TUNED_SUFFIX)


def script(system: str) -> Path:
    return HERE / f"{base(system)}_peer.py"


def run_one(python: str, system: str, args: list[str], timeout_s: float) -> dict[str, Any]:
    argv = [python, str(script(system)), *args, *(["--tuned"] if is_tuned(system) else [])]
    t0 = time.monotonic()
    rc, out, err = common.run_with_timeout(argv, timeout_s, cwd=HERE)
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    if rc is None:
        return {"error": f"timed out after {timeout_s:.0f}s"}
    try:
        res: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = " | ".join(err.strip().splitlines()[-2:])
        return {"error": f"exit {rc}, no result: {tail}"[:300]}
    res["wall_s"] = round(time.monotonic() - t0, 1)
    return res


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0].get("error", "no run") if runs else "no run", "runs": 0}
    agg: dict[str, Any] = {"runs": len(ok)}
    for key in ok[0]:
        vals = [
            r[key]
            for r in ok
            if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)
        ]
        if vals and len(vals) == len(ok):
            agg[key] = common.median(vals)
        elif key == "partial":
            agg[key] = ok[0][key]
    agg["values"] = runs
    return agg


# --------------------------------------------------------------------------
# Redis durability during the run
# --------------------------------------------------------------------------


@contextlib.contextmanager
def redis_aof(enable: bool) -> Iterator[str]:
    """With ``enable``, turn on AOF (appendfsync everysec) for the run and restore the
    server's settings afterwards; yields a description of what Redis did."""
    import redis

    try:
        # the sync client: its answers are values (the stubs also allow awaitables)
        r: Any = redis.Redis(host=common.REDIS_HOST, port=common.REDIS_PORT)
        before = {k: r.config_get(k)[k] for k in ("appendonly", "appendfsync", "save")}
    except Exception as exc:
        yield f"Redis not reachable: {exc}"
        return
    desc = (
        f"Redis {r.info('server')['redis_version']}, server settings as found: "
        f"appendonly={before['appendonly']}, appendfsync={before['appendfsync']}, "
        f"save='{before['save']}'"
    )
    if not enable:
        yield desc
        r.close()
        return
    r.config_set("appendonly", "yes")
    r.config_set("appendfsync", "everysec")
    try:
        yield (
            desc + "; for this run appendonly=yes, appendfsync=everysec (the usual "
            "durable setting, the analogue of SQLite WAL synchronous=NORMAL), restored after"
        )
    finally:
        r.config_set("appendfsync", before["appendfsync"])
        r.config_set("appendonly", before["appendonly"])
        r.close()


def environment_notes(redis_desc: str) -> list[str]:
    notes = [
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}.",
        redis_desc + ".",
    ]
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(common.PG_DSN) as conn:
            v = conn.execute("show server_version").fetchone()
            sc = conn.execute("show synchronous_commit").fetchone()
            fs = conn.execute("show fsync").fetchone()
            assert v
            assert sc
            assert fs
            notes.append(f"PostgreSQL {v[0]}: synchronous_commit={sc[0]}, fsync={fs[0]}.")
    return notes


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def fmt_num(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def cell(
    res: dict[str, Any] | None,
    keys: list[str],
    sep: str = " / ",
    notes: list[str] | None = None,
    label: str = "",
) -> str:
    if res is None:
        return "—"
    if "error" in res:
        if notes is not None:
            notes.append(f"{label}: {res['error']}")
            return f"✗ [{len(notes)}]"
        return "✗"
    text = sep.join(fmt_num(res.get(k)) for k in keys)
    if res.get("partial") and notes is not None:
        rate = "; rate over the jobs done" if label.endswith("drain") else ""
        notes.append(f"{label}: {res['partial']}{rate}")
        text += f" [{len(notes)}]"
    return text


def write_markdown(
    path: Path,
    results: dict[str, dict[str, Any]],
    info: dict[str, Any],
    args: argparse.Namespace,
    env_notes: list[str],
) -> None:
    n = "2,000" if args.quick else "50,000"
    crash_n = "1,000" if args.quick else f"{common.CRASH_JOBS:,}"
    lat_s = 5 if args.quick else 20
    bound = getattr(args, "timeout", None)
    command = (
        "bench/peers/run_all.py"
        + (" --quick" if args.quick else "")
        + f" --runs {args.runs}"
        + (
            f" --measures {','.join(args.measures)}"
            if args.measures != list(common.MEASURES)
            else ""
        )
        + (f" --timeout {bound:g}" if bound else "")
    )
    lines = [
        f"# conveyor vs the queues users would pick instead{' (quick run)' if args.quick else ''}",
        "",
        f"Generated by `{command}` (finished {time.strftime('%Y-%m-%d %H:%M')}).  Every figure "
        "is the median of the runs in the 'runs' column.  Bulk, single, 50-producer and drain "
        f"use {n} jobs; latency is enqueue→handler start at {common.LATENCY_RATE} jobs/s "
        f"offered for {lat_s} s; the crash test enqueues {crash_n} jobs of "
        f"{common.CRASH_JOB_S * 1000:g} ms, SIGKILLs the worker's process group at "
        f"{common.CRASH_KILL_FRACTION:.0%} done, restarts it and lets it finish."
        + (
            f"  A drain, and the wait for a latency backlog, stop after {bound:g} s: figures "
            "of a system that needed longer are marked partial."
            if bound
            else ""
        ),
        "",
        "| system | runs | bulk enqueue jobs/s | single enqueue jobs/s | 50 producers jobs/s "
        "| drain jobs/s | worker peak RSS MB | latency p50 / p99 ms | crash: lost / twice "
        "(re-run) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for system, per in results.items():
        if "error" in per:
            lines.append(f"| {system} | 0 | could not run: {per['error']} |||||||")
            continue
        # the fewest runs behind a figure shown (a measure that failed every run shows why)
        runs = min((r["runs"] for r in per.values() if r.get("runs")), default=0)

        def c(
            measure: str,
            keys: list[str],
            sep: str = " / ",
            _per: dict[str, Any] = per,
            _system: str = system,
        ) -> str:
            return cell(_per.get(measure), keys, sep, notes, f"{_system} {measure}")

        latency_cell = c("latency", ["p50_ms", "p99_ms"])
        offered = (per.get("latency") or {}).get("offered_per_s")
        if isinstance(offered, int | float) and offered < 0.95 * common.LATENCY_RATE:
            notes.append(
                f"{system} latency: its producer offered only {offered:,.0f} jobs/s "
                f"(one enqueue at a time could not go faster), not {common.LATENCY_RATE}"
            )
            latency_cell += f" [{len(notes)}]"
        crash = per.get("crash")
        crash_cell = c("crash", ["lost", "twice"])
        if crash and "error" not in crash:
            crash_cell += f" ({fmt_num(crash.get('rerun'))})"
        lines.append(
            f"| {system} | {runs} | {c('bulk', ['jobs_per_s'])} | {c('single', ['jobs_per_s'])} | "
            f"{c('concurrent', ['jobs_per_s'])} | {c('drain', ['jobs_per_s'])} | "
            f"{cell(per.get('drain'), ['peak_rss_mb'])} | "
            f"{latency_cell} | {crash_cell} |"
        )
    if notes:
        lines += ["", "Failures and partial figures:", ""]
        lines += [f"{i}. {t}" for i, t in enumerate(notes, 1)]
    lines += [
        "",
        "Reading the table: drain jobs/s counts from the worker's spawn to the last "
        "completion (startup included).  Peak RSS is the largest of the summed VmRSS of the "
        "worker's process tree (sampled every 50 ms) and any process's VmHWM.  Latency above "
        "a system's drain rate measures its backlog, not its dispatch.  In the crash column, "
        "'re-run' counts jobs started more than once (in flight at the kill, then run again), "
        "'twice' jobs completed more than once, 'lost' jobs never completed.",
    ]
    lines += ratio_table(results)
    lines += target_table(results)
    crash_rows = [
        f"| {system} | {fmt_num(crash.get('done_at_kill'))} | "
        f"{fmt_num(crash.get('in_flight_at_kill'))} | "
        f"{fmt_num(crash.get('lost_in_flight'))} | {fmt_num(crash.get('recovery_s'))} |"
        for system, per in results.items()
        if "error" not in per and (crash := per.get("crash")) and "error" not in crash
    ]
    if crash_rows:  # a run without the crash measure has none
        lines += [
            "",
            "## Crash test details",
            "",
            "| system | done at kill | in flight at kill | lost of those "
            "| last completion after kill, s |",
            "|---|---|---|---|---|",
            *crash_rows,
        ]
    lines += ["", "## Settings (same durability where the system has a setting)", ""]
    lines += [
        "A `_tuned` row is the same system, storage and durability at the best settings its "
        "own documentation gives for this workload; the last column says what changed from "
        "the default row and why.",
        "",
        "| system | versions | storage / durability | batch API | worker, concurrency "
        "| crash recovery | tuned: what and why |",
        "|---|---|---|---|---|---|---|",
    ]
    for system in results:
        d = info.get(system, {})
        s = d.get("settings", {})
        vers = ", ".join(f"{k} {v}" for k, v in d.get("versions", {}).items())
        lines.append(
            f"| {system} | {vers or '—'} | {s.get('storage', '—')} | "
            f"{s.get('batch', '—')} | {s.get('worker', '—')} | "
            f"{s.get('recovery', '—')} | {s.get('tuning', '—')} |"
        )
    lines += ["", "## Environment", ""] + [f"- {t}" for t in env_notes] + [""]
    path.write_text("\n".join(lines))


RATIOS = [  # (column, measure, key, True when higher is better)
    ("bulk", "bulk", "jobs_per_s", True),
    ("single", "single", "jobs_per_s", True),
    ("50 producers", "concurrent", "jobs_per_s", True),
    ("drain", "drain", "jobs_per_s", True),
    ("peak RSS", "drain", "peak_rss_mb", False),
    ("latency p50", "latency", "p50_ms", False),
    ("latency p99", "latency", "p99_ms", False),
]


def figure(per: dict[str, Any], measure: str, key: str) -> float | None:
    """A system's positive figure for ``measure``/``key``, None when it has none."""
    v = (per.get(measure) or {}).get(key) if "error" not in per else None
    return float(v) if isinstance(v, int | float) and v > 0 else None


def best_row(
    results: dict[str, dict[str, Any]],
    systems: list[str],
    measure: str,
    key: str,
    higher_better: bool,
) -> tuple[str, float] | None:
    """The row among ``systems`` with the better figure, and that figure."""
    found = [(s, v) for s in systems if (v := figure(results[s], measure, key)) is not None]
    if not found:
        return None
    pick = max if higher_better else min
    return pick(found, key=lambda sv: sv[1])


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:,.0f}x"


def ratio_table(results: dict[str, dict[str, Any]]) -> list[str]:
    """conveyor's figure against each peer's better row: above 1 means conveyor is better."""
    ours = results.get("conveyor", {})
    if "error" in ours or not ours:
        return []
    rows: dict[str, list[str]] = {}  # conveyor_http, and each peer with its one or two rows
    for system in results:
        if base(system) != "conveyor":
            rows.setdefault(base(system), []).append(system)
    lines = [
        "",
        "## conveyor's ratio to each peer",
        "",
        "conveyor's figure divided by the peer's for rates, the peer's divided by conveyor's "
        "for RSS and latency: above 1 means conveyor is better, below 1 that it is behind.  "
        "Each column takes the better of the peer's two rows (default and tuned); † marks a "
        "ratio against the tuned row.",
        "",
        "| peer | " + " | ".join(col for col, *_ in RATIOS) + " |",
        "|---|" + "---|" * len(RATIOS),
    ]
    for name, systems in rows.items():
        cells = []
        for _, measure, key, higher_better in RATIOS:
            a = figure(ours, measure, key)
            best = best_row(results, systems, measure, key, higher_better)
            if a is None or best is None:
                cells.append("—")
                continue
            system, b = best
            ratio = a / b if higher_better else b / a
            cells.append(fmt_ratio(ratio) + (" †" if is_tuned(system) else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


# The drain targets of issue #9: (what, the peers whose best row counts, the ratio wanted)
DRAIN_TARGETS = [
    ("huey's SQLite drain", ["huey"], 10.0),
    ("the best Redis peer", sorted(REDIS_SYSTEMS), 5.0),
]


def target_table(results: dict[str, dict[str, Any]]) -> list[str]:
    """conveyor's drain against the targets, each of its rows (default and tuned) against
    each peer's better row."""
    ours = [
        (system, value)
        for system in ("conveyor", "conveyor" + common.TUNED_SUFFIX)
        if (value := figure(results.get(system, {}), "drain", "jobs_per_s")) is not None
    ]
    if not ours:
        return []
    lines = [
        "",
        "## Drain targets (issue #9)",
        "",
        "| target | best peer row, jobs/s | conveyor row, jobs/s | ratio | met |",
        "|---|---|---|---|---|",
    ]
    for what, peers, wanted in DRAIN_TARGETS:
        rows = [s for s in results if base(s) in peers]
        best = best_row(results, rows, "drain", "jobs_per_s", True)
        for system, value in ours:
            if best is None:
                lines.append(f"| ≥ {wanted:g}x {what} | — | {system} {fmt_num(value)} | — | — |")
                continue
            peer, theirs = best
            ratio = value / theirs
            lines.append(
                f"| ≥ {wanted:g}x {what} | {peer} {fmt_num(theirs)} | {system} "
                f"{fmt_num(value)} | {fmt_ratio(ratio)} | {'yes' if ratio >= wanted else 'no'} |"
            )
    return lines


def write_chart(path: Path, results: dict[str, dict[str, Any]], quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [s for s, per in results.items() if "error" not in per]
    # the series that were measured (a drain-only run has no bulk enqueue figures)
    series = [
        (label, measure)
        for label, measure in (("bulk enqueue", "bulk"), ("drain", "drain"))
        if any(figure(results[s], measure, "jobs_per_s") for s in systems)
    ]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(systems) + 2), 4.5))
    width = 0.76 / max(1, len(series))
    for k, (label, measure) in enumerate(series):
        vals = [figure(results[s], measure, "jobs_per_s") or float("nan") for s in systems]
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(systems))]
        bars = ax.bar(xs, vals, width, label=label)
        for b, v in zip(bars, vals, strict=True):
            if not math.isnan(v):
                ax.annotate(
                    fmt_num(v),
                    (b.get_x() + b.get_width() / 2, v),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_yscale("log")
    ax.set_xticks(range(len(systems)), systems, rotation=30, ha="right")
    ax.set_ylabel("jobs/s (log scale)")
    what = " and ".join(label for label, _ in series).capitalize()
    ax.set_title(f"{what}, {'2,000' if quick else '50,000'} no-op jobs, one worker, 2 cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------


def measure_list(text: str) -> list[str]:
    """``--measures``: known measure names, comma-separated."""
    measures = [m for m in text.split(",") if m]
    unknown = [m for m in measures if m not in common.MEASURES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown measures {unknown}; known: {','.join(common.MEASURES)}"
        )
    return measures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 jobs, 5 s latency")
    ap.add_argument(
        "--systems",
        default="",
        help="comma-separated subset, run in this order, of " + ",".join(SYSTEMS),
    )
    ap.add_argument(
        "--measures",
        type=measure_list,
        default=list(common.MEASURES),
        help="comma-separated subset, run in this order, of " + ",".join(common.MEASURES),
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--python", default=sys.executable, help="interpreter that has the peers installed"
    )
    ap.add_argument(
        "--no-redis-aof",
        action="store_true",
        help="leave the Redis server's persistence settings alone",
    )
    ap.add_argument("--out", default=str(HERE / "results"), help="output path stem")
    ap.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds a drain, or the wait for a latency backlog, may take (default 600)",
    )
    ap.add_argument(
        "--render",
        default="",
        help="comma-separated results .json files: only write the table and chart from them",
    )
    args = ap.parse_args()

    wanted = [s.strip() for s in args.systems.split(",") if s.strip()] or SYSTEMS
    unknown = [s for s in wanted if s not in SYSTEMS]
    if unknown:
        ap.error(f"unknown systems {unknown}; known: {SYSTEMS}")
    out = Path(args.out)
    if args.render:
        render([Path(f) for f in args.render.split(",")], out)
        return
    systems = wanted  # in the order given: the runs that matter most first
    sub_timeout = 900.0 if args.quick else 2400.0
    quick = ["--quick"] if args.quick else []
    # the bound on a slow system's drain and on waiting for its latency backlog; never the
    # crash test, whose "lost" must not count jobs merely not run yet
    bounded = ["--timeout", str(args.timeout)] if args.timeout else []

    results: dict[str, dict[str, Any]] = {}
    info: dict[str, Any] = {}
    use_aof = not args.no_redis_aof and any(base(s) in REDIS_SYSTEMS for s in systems)
    with redis_aof(use_aof) as redis_desc:
        env_notes = environment_notes(redis_desc)
        for system in systems:
            if not script(system).exists():
                why = MISSING.get(system, "no script")
                results[system] = {"error": f"{script(system).name} is missing: {why}"}
                continue
            d = run_one(args.python, system, ["--describe"], 120)
            info[system] = d
            if "error" in d:  # import failed: the package is not installed or broken
                results[system] = {"error": d["error"]}
                print(f"{system}: cannot run: {d['error']}", flush=True)
                continue
            per: dict[str, Any] = {}
            for measure in args.measures:
                runs = []
                extra = bounded if measure in ("drain", "latency") else []
                for k in range(args.runs):
                    argv = ["--measure", measure, *quick, *extra]
                    r = run_one(args.python, system, argv, sub_timeout)
                    runs.append(r)
                    print(
                        f"{system} {measure} run {k + 1}: "
                        f"{json.dumps({x: y for x, y in r.items() if x != 'system'})}",
                        flush=True,
                    )
                per[measure] = aggregate(runs)
            results[system] = per
            # saved after every system, so that a run stopped early keeps what it finished
            save(out, results, info, args, env_notes)
    save(out, results, info, args, env_notes)
    render([out.with_suffix(".json")], out)


def save(
    out: Path,
    results: dict[str, dict[str, Any]],
    info: dict[str, Any],
    args: argparse.Namespace,
    env_notes: list[str],
) -> None:
    saved = {
        "quick": args.quick,
        "runs": args.runs,
        "timeout": args.timeout,
        "measures": args.measures,
        "results": results,
        "info": info,
        "environment": env_notes,
        "finished": time.strftime("%Y-%m-%d %H:%M"),
    }
    out.with_suffix(".json").write_text(json.dumps(saved, indent=1))


def render(saved_files: list[Path], out: Path) -> None:
    """Write the table, the chart and the merged JSON from saved runs (a measure's results
    come from the last file that has them)."""
    results: dict[str, dict[str, Any]] = {}
    info: dict[str, Any] = {}
    saved: list[dict[str, Any]] = [json.loads(f.read_text()) for f in saved_files]
    for data in saved:
        info.update(data["info"])
        for system, per in data["results"].items():
            earlier = results.get(system)
            if earlier is None or "error" in earlier or "error" in per:
                results[system] = per
            else:  # measures run again replace the earlier ones, the others stay
                earlier.update(per)
    first = saved[0]
    results = {s: results[s] for s in SYSTEMS if s in results}  # table order
    env_notes = list(dict.fromkeys(note for data in saved for note in data["environment"]))
    args = argparse.Namespace(
        quick=first["quick"],
        runs=first["runs"],
        timeout=first.get("timeout"),
        measures=first.get("measures", list(common.MEASURES)),
    )
    save(out, results, info, args, env_notes)
    write_markdown(out.with_suffix(".md"), results, info, args, env_notes)
    write_chart(out.with_suffix(".png"), results, first["quick"])
    print(f"wrote {out.with_suffix('.md')}, .json and .png")


if __name__ == "__main__":
    main()
