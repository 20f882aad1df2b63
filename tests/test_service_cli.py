"""The ``conveyor`` command: serve, the client commands, signals, handler loading, inspect."""

from __future__ import annotations

import gc
import json
import signal
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

import conveyor as conveyor_module
from conveyor.service import ServeOptions
from conveyor.service._cli import YOUNG_COLLECTION_THRESHOLD, collecting_less_often
from conveyor.service._format import parse_duration
from conveyor.service._server import Running
from service_server import Server, both_engines, conveyor, running_server

slow = pytest.mark.slow


def test_durations_take_a_unit() -> None:
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("90") == 90
    assert parse_duration("1.5h") == 5400
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


def test_durations_add_up_their_parts() -> None:
    assert parse_duration("1m30s") == 90
    assert parse_duration("1h30m") == 5400
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("1h30")  # 30 what?


def test_duration_flags_take_units() -> None:
    from click.testing import CliRunner

    from conveyor.service._cli import main

    refused = CliRunner().invoke(main, ["enqueue", "hello", "--delay", "soon"])
    assert refused.exit_code == 2
    assert "'soon' is not a duration" in refused.output


@both_engines
@slow
def test_client_commands_drive_a_running_service(db_path: Path) -> None:
    with running_server(db_path) as server:
        url = ("--url", server.url)
        done = conveyor("enqueue", "hello", "--payload", '{"x": 1}', "--wait", "--json", *url)
        assert done.returncode == 0, done.stderr
        job = json.loads(done.stdout)
        assert (job["status"], job["result"]) == ("completed", {"hello": {"x": 1}})
        shown = conveyor("get", str(job["id"]), *url)
        assert shown.returncode == 0
        assert "completed" in shown.stdout
        listed = json.loads(conveyor("list", "--status", "completed", "--json", *url).stdout)
        assert [j["id"] for j in listed["jobs"]] == [job["id"]]
        stats = json.loads(conveyor("stats", "--json", *url).stdout)
        assert stats["by_status"]["completed"] == 1
        purged = conveyor("purge", "--older-than", "0s", "--json", *url)
        assert json.loads(purged.stdout) == {"deleted": 1}


@both_engines
@slow
def test_exit_codes_say_not_found_and_refused(db_path: Path) -> None:
    with running_server(db_path) as server:
        url = ("--url", server.url)
        missing = conveyor("get", "999", *url)
        assert missing.returncode == 3
        assert "no job has id 999" in missing.stderr
        unknown = conveyor("enqueue", "nope", *url)
        assert unknown.returncode == 4
        assert "no handler named 'nope'" in unknown.stderr
        job = json.loads(conveyor("enqueue", "hello", "--wait", "--json", *url).stdout)
        refused = conveyor("cancel", str(job["id"]), *url)
        assert refused.returncode == 4
        assert "completed" in refused.stderr


@both_engines
@slow
def test_cancel_and_requeue_commands(db_path: Path) -> None:
    with running_server(db_path) as server:
        url = ("--url", server.url)
        job = json.loads(conveyor("enqueue", "hello", "--delay", "3600", "--json", *url).stdout)
        cancelled = conveyor("cancel", str(job["id"]), "--json", *url)
        assert json.loads(cancelled.stdout)["status"] == "cancelled"
        requeued = conveyor("requeue", str(job["id"]), "--json", *url)
        assert requeued.returncode == 0
        # Requeued jobs are due at once, so it may already be running or done when read back.
        assert json.loads(requeued.stdout)["status"] in ("pending", "running", "completed")


@both_engines
@slow
def test_wait_gives_up_after_its_timeout_with_exit_code_5(db_path: Path) -> None:
    with running_server(db_path) as server:
        url = ("--url", server.url)
        job = json.loads(conveyor("enqueue", "hello", "--delay", "3600", "--json", *url).stdout)
        waited = conveyor("wait", str(job["id"]), "--timeout", "0.2", *url)
        assert waited.returncode == 5


@slow
def test_an_unreachable_service_is_exit_code_1() -> None:
    result = conveyor("stats", "--url", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "cannot reach the conveyor service" in result.stderr


@both_engines
@slow
def test_a_token_server_refuses_clients_without_it(db_path: Path) -> None:
    with running_server(db_path, "--token", "s3cret") as server:
        assert conveyor("stats", "--url", server.url).returncode == 4
        ok = conveyor("stats", "--url", server.url, "--token", "s3cret")
        assert ok.returncode == 0


@both_engines
@slow
def test_sigterm_shuts_down_gracefully_returning_running_jobs_to_pending(db_path: Path) -> None:
    with running_server(db_path, "--shutdown-grace", "0.2") as server:
        job = httpx.post(f"{server.url}/jobs", json={"name": "sleepy"}).json()
        _wait_until_running(server.url, job["id"])
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=20) == 0
    report = json.loads(conveyor("inspect", "--db", str(db_path), "--json").stdout)
    assert report["by_status"]["pending"] == 1


@both_engines
@slow
def test_a_second_signal_stops_at_once_losing_no_job(db_path: Path) -> None:
    with running_server(db_path, "--shutdown-grace", "60") as server:
        job = httpx.post(f"{server.url}/jobs", json={"name": "sleepy"}).json()
        _wait_until_running(server.url, job["id"])
        server.process.send_signal(signal.SIGINT)
        time.sleep(0.3)
        server.process.send_signal(signal.SIGINT)
        server.process.wait(timeout=10)
    # The job was running when the process stopped: the next queue on the file recovers it.
    with running_server(db_path) as server:
        job = httpx.get(f"{server.url}/jobs/{job['id']}").json()
        assert job["status"] in ("pending", "running")


def _wait_until_running(url: str, job_id: int) -> None:
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/jobs/{job_id}").json()["status"] != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)


@slow
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("service_handlers", "module:attribute"),
        ("no_such_module:registry", "cannot import module 'no_such_module'"),
        ("service_handlers:missing", "has no attribute 'missing' (its registries: registry)"),
        ("service_handlers:not_a_registry", "is a dict, not a conveyor.Registry"),
    ],
)
def test_serve_names_what_is_wrong_with_handlers(db_path: Path, spec: str, message: str) -> None:
    result = conveyor("serve", "--db", str(db_path), "--handlers", spec, "--port", "0")
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split())


@slow
def test_serve_refuses_a_public_address_without_a_token(db_path: Path) -> None:
    result = conveyor(
        "serve",
        "--db",
        str(db_path),
        "--handlers",
        "service_handlers:registry",
        "--host",
        "0.0.0.0",
    )
    assert result.returncode == 2
    assert "without a token" in " ".join(result.stderr.split())


@both_engines
@slow
def test_inspect_reads_the_file_while_a_server_runs(db_path: Path) -> None:
    with running_server(db_path) as server:
        httpx.post(f"{server.url}/jobs", json={"name": "fail_once"})
        job = httpx.post(f"{server.url}/jobs", json={"name": "hello", "delay": 3600}).json()
        deadline = time.monotonic() + 10
        while True:
            report = json.loads(conveyor("inspect", "--db", str(db_path), "--json").stdout)
            if report["failed"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert report["by_status"]["pending"] == 1
        assert report["oldest_pending_age"] is not None
        assert "always fails" in report["failed"][0]["error"]
        assert job["id"]


def test_inspect_refuses_a_missing_file(tmp_path: Path) -> None:
    result = conveyor("inspect", "--db", str(tmp_path / "nope.db"))
    assert result.returncode == 1
    assert "does not exist" in result.stderr


def test_inspect_asks_for_an_upgrade_of_an_older_file(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE jobs (id INTEGER); PRAGMA application_id = 1129270870;")
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    result = conveyor("inspect", "--db", str(path))
    assert result.returncode == 1
    assert "older than this conveyor's" in result.stderr
    assert "to upgrade it" in result.stderr


@slow
def test_the_demo_runs_its_workload_to_the_end(tmp_path: Path) -> None:
    result = conveyor("demo", "--port", "0", cwd=tmp_path, timeout=90)
    assert result.returncode == 0, result.stderr
    assert "Workload done" in result.stdout
    assert "dashboard: http://127.0.0.1:" in result.stdout


@both_engines
@pytest.mark.slow
def test_one_keep_alive_connection_carries_more_than_a_thousand_requests(db_path: Path) -> None:
    with running_server(db_path) as server:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        conn = socket.create_connection((host, int(port)), timeout=10)
        with conn, conn.makefile("rb") as reader:
            for _ in range(1_200):
                conn.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                head = [reader.readline() for _ in range(2)]
                assert head[0].startswith(b"HTTP/1.1 200"), head
                while (line := reader.readline()) not in (b"\r\n", b""):
                    head.append(line)
                    assert not line.lower().startswith(b"connection: close"), head
                length = next(
                    int(h.split(b":")[1]) for h in head if h.lower().startswith(b"content-length")
                )
                reader.read(length)


# --- handlers: pause, resume, list --------------------------------------------------------------
@both_engines
@slow
def test_pause_holds_a_handlers_jobs_and_resume_runs_them(db_path: Path) -> None:
    with running_server(db_path) as server:
        url = ("--url", server.url)
        paused = conveyor("pause", "hello", *url)
        job = json.loads(conveyor("enqueue", "hello", "--json", *url).stdout)
        other = conveyor("enqueue", "fail_once", "--wait", *url)
        held = json.loads(conveyor("get", str(job["id"]), "--json", *url).stdout)
        resumed = conveyor("resume", "hello", *url)
        done = json.loads(conveyor("wait", str(job["id"]), "--json", *url).stdout)
    assert (paused.returncode, paused.stdout.strip()) == (0, "paused handler hello")
    assert other.returncode == 0  # another handler's job ran meanwhile
    assert held["status"] == "pending"
    assert (resumed.returncode, resumed.stdout.strip()) == (0, "resumed handler hello")
    assert done["status"] == "completed"


@both_engines
@slow
def test_pause_says_when_a_handler_was_already_paused(db_path: Path) -> None:
    with running_server(db_path) as server:
        conveyor("pause", "hello", "--url", server.url)
        again = conveyor("pause", "hello", "--url", server.url)
    assert (again.returncode, again.stdout.strip()) == (0, "handler hello was already paused")


@both_engines
@slow
def test_pause_of_an_unknown_handler_is_exit_code_3(db_path: Path) -> None:
    with running_server(db_path) as server:
        result = conveyor("pause", "nope", "--url", server.url)
    assert result.returncode == 3
    assert "no handler named 'nope'" in " ".join(result.stderr.split())


@both_engines
@slow
def test_handlers_lists_each_handler_with_its_pause(db_path: Path) -> None:
    with running_server(db_path) as server:
        conveyor("pause", "sleepy", "--url", server.url)
        listed = json.loads(conveyor("handlers", "--json", "--url", server.url).stdout)
    paused = {handler["name"]: handler["paused"] for handler in listed["handlers"]}
    assert paused == {"event_loop": False, "fail_once": False, "hello": False, "sleepy": True}


# --- wait --all ---------------------------------------------------------------------------------
def _enqueue(url: str, name: str, **fields: object) -> int:
    response = httpx.post(f"{url}/jobs", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    job_id: int = response.json()["id"]
    return job_id


@both_engines
@slow
def test_wait_all_follows_a_batch_until_every_job_is_finished(db_path: Path) -> None:
    with running_server(db_path) as server:
        ids = [str(_enqueue(server.url, "hello")) for _ in range(3)]
        ids.append(str(_enqueue(server.url, "fail_once")))
        result = conveyor("wait", "--all", *ids, "--url", server.url)
    assert result.returncode == 0, result.stderr
    assert "4 of 4 jobs finished: 3 completed, 1 failed" in " ".join(result.stdout.split())


@both_engines
@slow
def test_wait_all_prints_the_batchs_counts_as_json(db_path: Path) -> None:
    with running_server(db_path) as server:
        ids = [str(_enqueue(server.url, "hello")) for _ in range(2)]
        result = conveyor("wait", "--all", *ids, "--json", "--url", server.url)
    body = json.loads(result.stdout)
    assert (body["total"], body["completed"], body["finished"]) == (2, 2, 2)


@both_engines
@slow
def test_wait_all_gives_up_after_its_timeout_with_exit_code_5(db_path: Path) -> None:
    with running_server(db_path) as server:
        done = _enqueue(server.url, "hello")
        later = _enqueue(server.url, "hello", delay=3600)
        result = conveyor(
            "wait", "--all", str(done), str(later), "--timeout", "0.5", "--url", server.url
        )
    assert result.returncode == 5
    assert "1 of the 2 jobs did not finish within 0.5 s" in " ".join(result.stderr.split())


@both_engines
@slow
def test_wait_all_of_an_unknown_job_is_exit_code_3(db_path: Path) -> None:
    with running_server(db_path) as server:
        result = conveyor(
            "wait", "--all", str(_enqueue(server.url, "hello")), "999", "--url", server.url
        )
    assert result.returncode == 3
    assert "no job has id 999" in result.stderr


def test_wait_for_several_jobs_needs_all() -> None:
    result = conveyor("wait", "1", "2")
    assert result.returncode == 2
    assert "--all" in result.stderr


# --- what serve logs, and a queue that stops for good -------------------------------------------
def _stop(server: Server) -> str:
    """Stop the server with SIGTERM; everything it wrote on stderr after its start line."""
    server.process.send_signal(signal.SIGTERM)
    return server.stderr_after_exit()


@both_engines
@slow
def test_serve_prints_the_info_records_of_the_conveyor_logger(db_path: Path) -> None:
    with running_server(db_path, handlers="service_log_handlers:registry") as server:
        job = _enqueue(server.url, "stall", payload=3)
        httpx.get(f"{server.url}/jobs/{job}/wait", params={"timeout": 60}, timeout=70)
        logged = _stop(server)
    assert " INFO conveyor" in logged
    assert "the event loop runs again" in logged


@both_engines
@slow
def test_serve_with_log_level_warning_hides_info_records(db_path: Path) -> None:
    with running_server(
        db_path, "--log-level", "warning", handlers="service_log_handlers:registry"
    ) as server:
        job = _enqueue(server.url, "stall", payload=3)
        httpx.get(f"{server.url}/jobs/{job}/wait", params={"timeout": 60}, timeout=70)
        logged = _stop(server)
    assert " WARNING conveyor" in logged  # the stall itself
    assert "the event loop runs again" not in logged


@both_engines
@slow
def test_a_request_when_the_file_is_deleted_is_a_503_problem(db_path: Path) -> None:
    with running_server(db_path) as server:
        db_path.unlink()
        response = httpx.post(f"{server.url}/jobs", json={"name": "hello"})
        server.process.wait(timeout=30)
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert "was deleted, moved or replaced" in response.json()["detail"]


@both_engines
@slow
def test_serve_exits_with_one_line_naming_the_file_when_it_is_deleted(db_path: Path) -> None:
    with running_server(db_path) as server:
        db_path.unlink()
        httpx.post(f"{server.url}/jobs", json={"name": "hello"})
        code = server.process.wait(timeout=30)
        printed = server.stderr_after_exit()
    last = printed.strip().splitlines()[-1]
    assert code == 1
    assert last.startswith("error: cannot serve: ")
    assert f"{db_path} was deleted, moved or replaced" in last
    assert "Traceback" not in printed


@both_engines
@slow
def test_serve_logs_json_lines_with_an_access_record_per_request(db_path: Path) -> None:
    import httpx

    with running_server(db_path, "--log-format", "json") as server:
        assert httpx.get(f"{server.url}/stats").status_code == 200
        deadline = time.monotonic() + 30
        while not any("conveyor.access" in line for line in server.stderr):
            assert time.monotonic() < deadline, server.stderr
            time.sleep(0.01)
    records = [json.loads(line) for line in server.stderr if line.startswith("{")]
    (access,) = [record for record in records if record["logger"] == "conveyor.access"]
    assert (access["http_method"], access["http_path"], access["http_status"]) == (
        "GET",
        "/stats",
        200,
    )
    assert access["level"] == "INFO"
    assert access["message"].endswith("ms")


def test_a_record_as_a_json_line_keeps_its_extra_fields() -> None:
    import logging

    from conveyor.service._cli import JsonLines

    record = logging.makeLogRecord(
        {"name": "conveyor", "levelname": "WARNING", "msg": "job %d failed", "args": (7,)}
    )
    record.conveyor_job = 7
    line = json.loads(JsonLines().format(record))
    assert (line["message"], line["level"], line["conveyor_job"]) == ("job 7 failed", "WARNING", 7)


# --- enqueue's flags, serve's and worker's options, defaults, error lines -----------------------
def _serve_options_of(monkeypatch: pytest.MonkeyPatch, *args: str) -> ServeOptions:
    """The options ``conveyor serve ARGS`` would serve with (nothing is served)."""
    from click.testing import CliRunner

    from conveyor.service import _cli

    seen: list[ServeOptions] = []
    monkeypatch.setattr(_cli, "_run_server", lambda options, *_, **__: seen.append(options))
    result = CliRunner().invoke(
        _cli.main, ["serve", "--handlers", "service_handlers:registry", *args]
    )
    assert result.exit_code == 0, result.output
    return seen[0]


def _refused(*args: str) -> str:
    """What the command line ARGS is refused with (exit code 2, nothing run)."""
    from click.testing import CliRunner

    from conveyor.service._cli import main

    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 2, result.output
    return " ".join(result.output.split())


def _param_defaults(command: str) -> dict[str | None, object]:
    from conveyor.service._cli import main

    return {param.name: param.default for param in main.commands[command].params}


@slow
def test_enqueue_max_attempts_sets_the_jobs_attempts(db_path: Path) -> None:
    with running_server(db_path) as server:
        args = ("--max-attempts", "7", "--delay", "1h", "--json", "--url", server.url)
        job = json.loads(conveyor("enqueue", "hello", *args).stdout)
    assert job["max_attempts"] == 7


@slow
def test_enqueue_timeout_sets_the_jobs_timeout(db_path: Path) -> None:
    with running_server(db_path) as server:
        args = ("--timeout", "1m30s", "--delay", "1h", "--json", "--url", server.url)
        job = json.loads(conveyor("enqueue", "hello", *args).stdout)
    assert job["timeout"] == 90


@slow
def test_enqueue_run_at_takes_an_iso_time_with_its_offset(db_path: Path) -> None:
    with running_server(db_path) as server:
        args = ("--run-at", "2030-01-01T09:00:00+01:00", "--json", "--url", server.url)
        job = json.loads(conveyor("enqueue", "hello", *args).stdout)
    assert job["run_at"] == 1893484800  # 2030-01-01T08:00:00Z
    assert job["status"] == "pending"


@slow
def test_enqueue_run_at_takes_epoch_seconds(db_path: Path) -> None:
    with running_server(db_path) as server:
        args = ("--run-at", "1893484800", "--json", "--url", server.url)
        job = json.loads(conveyor("enqueue", "hello", *args).stdout)
    assert job["run_at"] == 1893484800


def test_enqueue_refuses_delay_with_run_at() -> None:
    refused = _refused("enqueue", "hello", "--delay", "1h", "--run-at", "1893484800")
    assert "give --delay or --run-at, not both" in refused


def test_enqueue_run_at_needs_an_offset() -> None:
    refused = _refused("enqueue", "hello", "--run-at", "2030-01-01T09:00:00")
    assert "needs its UTC offset" in refused


def test_enqueue_run_at_refuses_milliseconds() -> None:
    refused = _refused("enqueue", "hello", "--run-at", "1893484800000")
    assert "looks like milliseconds" in refused


def test_enqueue_max_attempts_is_at_least_1() -> None:
    assert "--max-attempts" in _refused("enqueue", "hello", "--max-attempts", "0")


def test_enqueue_timeout_is_more_than_0() -> None:
    assert "more than 0 seconds" in _refused("enqueue", "hello", "--timeout", "0s")


def test_serve_engine_chooses_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _serve_options_of(monkeypatch, "--engine", "trio").engine == "trio"
    assert _serve_options_of(monkeypatch, "--engine", "asyncio").engine == "asyncio"
    assert "'curio' is not one of" in _refused("serve", "--handlers", "x:y", "--engine", "curio")


def test_serve_max_pending_is_passed_to_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _serve_options_of(monkeypatch).max_pending is None
    assert _serve_options_of(monkeypatch, "--max-pending", "100").max_pending == 100
    assert "--max-pending" in _refused("serve", "--handlers", "x:y", "--max-pending", "0")


@slow
def test_serve_max_pending_refuses_enqueues_beyond_it(db_path: Path) -> None:
    with running_server(db_path, "--max-pending", "1") as server:
        url = ("--url", server.url)
        assert conveyor("enqueue", "hello", "--delay", "1h", *url).returncode == 0
        full = conveyor("enqueue", "hello", "--delay", "1h", *url)
    assert full.returncode == 4
    assert "full" in full.stderr


def test_serve_synchronous_full_is_passed_to_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _serve_options_of(monkeypatch).synchronous == "normal"
    assert _serve_options_of(monkeypatch, "--synchronous", "full").synchronous == "full"


def test_serve_retention_takes_a_duration(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _serve_options_of(monkeypatch).retention is None
    assert _serve_options_of(monkeypatch, "--retention", "7d").retention == 7 * 86400
    assert "not a duration" in _refused("serve", "--handlers", "x:y", "--retention", "a week")


def test_worker_synchronous_full_is_passed_to_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from conveyor.service import _cli

    opened: list[dict[str, object]] = []

    def open_queue(path: str, **options: object) -> object:
        opened.append(options)
        raise conveyor_module.DatabaseError("not opened in this test")

    monkeypatch.setattr(_cli, "open_queue", open_queue)
    monkeypatch.setattr(_cli, "log_to_stderr", lambda *_, **__: None)
    args = ["worker", "--handlers", "service_handlers:registry", "--synchronous", "full"]
    CliRunner().invoke(_cli.main, args)
    assert opened[0]["synchronous"] == "full"


def test_the_commands_default_to_the_librarys_file_and_workers() -> None:
    import inspect

    library = inspect.signature(conveyor_module.open_queue).parameters
    for command in ("serve", "worker", "inspect"):
        assert _param_defaults(command)["db"] == library["path"].default == "conveyor.db"
    for command in ("serve", "worker", "demo"):
        assert _param_defaults(command)["workers"] == library["workers"].default


def test_serve_worker_and_demo_take_log_level_and_log_format() -> None:
    for command in ("serve", "worker", "demo"):
        defaults = _param_defaults(command)
        assert (defaults["log_level"], defaults["log_format"]) == ("info", "text")


def test_an_error_is_one_line_however_narrow_the_terminal(tmp_path: Path) -> None:
    import os
    import subprocess

    from service_server import CONVEYOR

    path = str(tmp_path / ("a-rather-long-directory-name-" * 6) / "queue.db")
    result = subprocess.run(
        [CONVEYOR, "inspect", "--db", path],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "20"},
    )
    assert result.returncode == 1
    assert result.stderr == f"error: {path} does not exist (or is not a file)\n"


def test_collecting_less_often_raises_the_threshold_then_restores_the_collector() -> None:
    before = gc.get_threshold()
    with collecting_less_often() as freeze:
        assert gc.get_threshold()[0] == YOUNG_COLLECTION_THRESHOLD
        freeze()
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_the_serve_command_serves_collecting_less_often_and_frozen_once_listening(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import trio
    from click.testing import CliRunner

    from conveyor.service import _cli

    seen: list[tuple[int, int]] = []

    def serve(
        options: ServeOptions,
        registry: conveyor_module.Registry,
        after_start: Callable[[Running], Awaitable[object]],
    ) -> None:
        """Listens nowhere: calls back as a server that listens would."""
        seen.append((gc.get_threshold()[0], gc.get_freeze_count()))
        running = Running("http://127.0.0.1:1", None, None, lambda: None)  # type: ignore[arg-type]
        trio.run(after_start, running)
        seen.append((gc.get_threshold()[0], gc.get_freeze_count()))

    monkeypatch.setattr(_cli, "run_serving", serve)
    monkeypatch.setattr(_cli, "log_to_stderr", lambda *_, **__: None)
    result = CliRunner().invoke(_cli.main, ["serve", "--handlers", "service_handlers:registry"])
    assert result.exit_code == 0, result.output
    [(during, frozen_before), (_, frozen_after)] = seen
    assert during == YOUNG_COLLECTION_THRESHOLD
    assert frozen_before == 0
    assert frozen_after > 0
    assert gc.get_freeze_count() == 0
