"""Schemathesis against a real server's /openapi.json, bounded: no 5xx, answers match the schema.

Runs schemathesis's own command line (its pytest plugin's lazy fixtures do not work with this
pytest) against ``conveyor serve`` on a free loopback port, bounded by an example count and an
8 s time budget. Its hooks (``schemathesis_hooks.py``) keep long polls short.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service_server import both_engines, running_server

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
TESTS = str(Path(__file__).parent)

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance"
)


@both_engines
@pytest.mark.slow
def test_the_api_answers_as_its_schema_says(db_path: Path, tmp_path: Path) -> None:
    with running_server(db_path) as server:
        result = subprocess.run(
            [
                SCHEMATHESIS,
                "run",
                f"{server.url}/openapi.json",
                "--checks",
                CHECKS,
                "--max-examples",
                "5",
                "--seed",
                "1",
                "--generation-deterministic",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-time",
                "8",
                "--request-timeout",
                "2",
                "--no-color",
            ],
            cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks", "PYTHONPATH": TESTS},
            capture_output=True,
            text=True,
            timeout=100,
            check=False,
        )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
