"""A fast lane for the sidecar's few hottest statements: the driver's own cursor, inside SQLAlchemy's transaction.

SQLAlchemy's per-statement work (compiling from its cache, expanding IN lists, result processing) cost more than
SQLite itself on the sidecar's path (bench/proxy_bench.py, py-spy: `do_execute` was a third of a reveal's time and
the rest of `Connection.execute` as much again). These statements are plain: text and integer columns, BLOBs as
bytes, nothing SQLAlchemy converts, so the driver's tuples are what SQLAlchemy would have returned.

The statement runs on the same DBAPI connection as the SQLAlchemy `Connection` it is given, so it is part of that
transaction (or, for the vault's reads that open none, its own snapshot). Driver errors are turned into SQLAlchemy's
exceptions (`DBAPIError.instance`, parameters hidden) so callers' error handling (`IntegrityError` retries, a
database that is down becoming a 503) is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError


def mark(conn: Connection) -> str:
    """The driver's parameter placeholder: sqlite3 uses qmark, psycopg format."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def marks(conn: Connection, count: int) -> str:
    return ", ".join([mark(conn)] * count)


def fetchall(conn: Connection, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    dbapi = conn.dialect.loaded_dbapi
    try:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(sql, params)
            return list(cursor.fetchall())
        finally:
            cursor.close()
    except dbapi.Error as exc:
        raise DBAPIError.instance(sql, None, exc, dbapi.Error, hide_parameters=True, dialect=conn.dialect) from None


def executemany(conn: Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    dbapi = conn.dialect.loaded_dbapi
    try:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(sql, rows)
        finally:
            cursor.close()
    except dbapi.Error as exc:
        raise DBAPIError.instance(sql, None, exc, dbapi.Error, hide_parameters=True, dialect=conn.dialect) from None
