"""Fresh schemas on the tests' PostgreSQL, for the state machine and the crash suite.

The server is the one the core tests use (``tests/conftest.py``): ``CONVEYOR_TEST_POSTGRES``,
by default a local PostgreSQL with trust authentication. Each queue lives in a schema of its
own, dropped once its run is over.
"""

from __future__ import annotations

import functools
import os
import urllib.parse
import uuid
from typing import Final

from conveyor._storage.postgres import parse_target

POSTGRES_URL: Final = os.environ.get(
    "CONVEYOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)

DROP_LOCK_TIMEOUT: Final = "10s"
"""How long a drop waits for a connection still using the schema, rather than hanging."""


@functools.cache
def postgres_unreachable(url: str = POSTGRES_URL) -> str | None:
    """Why the PostgreSQL at ``url`` cannot be used (``None``: it can)."""
    try:
        import psycopg

        psycopg.connect(parse_target(url).conninfo, connect_timeout=3).close()
    except Exception as exc:
        return f"no PostgreSQL at {url} ({exc})"
    return None


def fresh_schema(prefix: str) -> str:
    """A schema name no queue uses yet."""
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def schema_url(url: str, schema: str) -> str:
    """``url`` with its queue in ``schema`` (a ``schema`` it names already is replaced)."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "schema"]
    query.append(("schema", schema))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def drop_schema(url: str) -> None:
    """Drop the schema ``url`` names, and the queue's tables in it."""
    import psycopg
    import psycopg.sql

    target = parse_target(url)
    with psycopg.connect(target.conninfo, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"SET lock_timeout = '{DROP_LOCK_TIMEOUT}'")
        conn.execute(
            psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                psycopg.sql.Identifier(target.schema)
            )
        )


def rows(url: str, query: str) -> list[tuple[int, str]]:
    """The rows ``query`` reads in the schema ``url`` names (none if it has no tables yet)."""
    import psycopg
    import psycopg.sql

    target = parse_target(url)
    with psycopg.connect(target.conninfo, autocommit=True, connect_timeout=10) as conn:
        conn.execute(
            psycopg.sql.SQL("SET search_path TO {}").format(psycopg.sql.Identifier(target.schema))
        )
        try:
            return [(row[0], row[1]) for row in conn.execute(query).fetchall()]
        except psycopg.errors.UndefinedTable:
            return []
