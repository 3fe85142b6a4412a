"""Engine, sessions and migrations. Built from settings by ``create_app``; nothing at import."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from sdk.errors import ConfigError, NotFoundError

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
#: PostgreSQL advisory lock key held while migrating ("edgefleet" in ASCII, truncated).
MIGRATION_LOCK = 0x6564676566

Row = TypeVar("Row")


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets the API read while the ingest thread writes; busy_timeout waits instead of failing.
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def owner_only(path: Path) -> None:
    """Make the SQLite file ``path`` (and its -wal, -shm and -journal files) readable by its owner only.

    The database holds device telemetry and token hashes. SQLite creates its -wal and -shm files
    with the mode of the database file, so creating that one 0600 (before SQLite does, with the
    umask's 0644) covers them; existing files from an older start are tightened too.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        for suffix in ("", "-wal", "-shm", "-journal"):
            side = path.with_name(path.name + suffix)
            if side.exists() and side.stat().st_mode & 0o077:
                os.chmod(side, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot create the database file {path}: {exc.strerror or exc}") from None


def make_engine(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    try:
        if url.startswith("sqlite"):
            path = url.split("///", 1)[1].split("?", 1)[0] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                owner_only(Path(path))
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
    except (SQLAlchemyError, ValueError) as exc:
        raise ConfigError(f"bad database URL {url!r}: {exc}") from None
    return engine


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration shipped in the package (run at every start)."""
    # imported here: only start-up migrates, and every module that reads rows imports this file
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                # Replicas starting together must not race to create the same tables.
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        raise ConfigError(
            f"cannot migrate the database {engine.url!r}: {exc.__class__.__name__}: {exc}"
        ) from None


class Database:
    """The engine and its session factory; one per app."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.is_postgres = self.engine.dialect.name == "postgresql"

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as s, s.begin():
            yield s

    def dispose(self) -> None:
        self.engine.dispose()


def get_existing(session: Session, model: type[Row], key: str, what: str, *, for_update: bool = False) -> Row:
    """The row with primary key ``key``, or :class:`NotFoundError` ``no <what> <key>`` (a 404 at the API).

    ``for_update`` locks the row until the transaction ends (PostgreSQL; SQLite ignores it).
    """
    row = session.get(model, key, with_for_update=for_update)
    if row is None:
        raise NotFoundError(f"no {what} {key}")
    return row
