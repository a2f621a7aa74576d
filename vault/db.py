"""Engines for the two backends: SQLite (embedded default, WAL) and PostgreSQL (several replicas, one database)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

from vault.errors import BadInput, Unavailable

WRITE_OPTION = "tokenbunker_write"
READ_OPTION = "tokenbunker_read"


def make_engine(url: str, pool_size: int = 5) -> Engine:
    try:
        parsed = make_url(url)
    except Exception:
        raise BadInput("vault.database_url is not a valid SQLAlchemy URL") from None
    # hide_parameters: a failing statement's message must never carry the values it was writing.
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(
            parsed, hide_parameters=True, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size * 2
        )
    raise BadInput(f"vault.database_url: unsupported database '{parsed.get_backend_name()}' (sqlite, postgresql)")


def _sqlite_engine(parsed: Any) -> Engine:
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, hide_parameters=True, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Transactions are begun by hand below; pysqlite's own BEGIN would be deferred and could fail to upgrade
        # to a write lock under WAL when another process commits in between.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock up front (waiting on busy_timeout); readers stay concurrent. The vault's
        # reads open no transaction at all: each SELECT is its own snapshot, and BEGIN/COMMIT around a single
        # SELECT cost a third of a reveal.
        options = conn.get_execution_options()
        if options.get(WRITE_OPTION):
            _begin(conn, "BEGIN IMMEDIATE")
        elif not options.get(READ_OPTION):
            _begin(conn, "BEGIN")

    return engine


def _begin(conn: Any, sql: str) -> None:
    """BEGIN on the driver's connection: through exec_driver_sql it cost as much as a small transaction's
    statements (every sidecar flow takes one). A driver error still becomes SQLAlchemy's, as vault/rawsql.py does."""
    try:
        conn.connection.driver_connection.execute(sql)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, None, exc, sqlite3.Error, hide_parameters=True, dialect=conn.dialect) from None


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def safe_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


class Transient(Unavailable):
    """A deadlock or serialization failure: the transaction was rolled back and may simply be run again."""


_TRANSIENT_SQLSTATES = {"40001", "40P01"}


@contextmanager
def db_errors() -> Iterator[None]:
    """A database that is down or locked is the client's 503, never a stack trace; integrity errors go up."""
    try:
        yield
    except IntegrityError:
        raise
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) in _TRANSIENT_SQLSTATES:
            raise Transient("database busy (concurrent writers); try again") from None
        raise Unavailable(f"database unavailable ({type(exc.orig).__name__})") from None
