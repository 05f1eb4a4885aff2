"""A throwaway PostgreSQL database per test, on the machine's server (127.0.0.1:5432, trust auth;
RLHB_TEST_POSTGRES_URL points elsewhere). Tests share the server, so each gets its own database
and drops it afterwards. No server is a clear error, not a skip."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

ADMIN_URL = os.environ.get("RLHB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """The URL of a new, empty database; dropped on exit."""
    import psycopg

    name = f"rlhbtest_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        raise RuntimeError(
            f"no PostgreSQL at {ADMIN_URL} ({e}); start it (pg_ctlcluster ... main start) or set RLHB_TEST_POSTGRES_URL"
        ) from e
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield ADMIN_URL.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
