"""A throwaway PostgreSQL database per test on 127.0.0.1:5432 (trust auth, user postgres)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(ADMIN_DSN):
            return True
    except Exception:
        return False


@contextmanager
def temporary_database() -> Iterator[str]:
    """Create ``edgefleet_test_<random>``, yield its SQLAlchemy URL, drop it afterwards."""
    import psycopg

    if not postgres_available():
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432")
    name = f"edgefleet_test_{secrets.token_hex(6)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
