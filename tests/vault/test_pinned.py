"""Connections kept by a thread (Vault.pin_thread): the sidecar's writer and readers take one connection for all of
their transactions instead of a checkout each; everything else behaves as without."""

from __future__ import annotations

import threading

import pytest

from vault import vaultbase
from vault.core import FlowTokenize, Vault
from vault.tokens import TokenRequest


def _flow(email: str) -> FlowTokenize:
    return FlowTokenize(("email", email), [TokenRequest(email, kind="email", format="email")])


def test_a_pinned_thread_reuses_one_connection_per_kind(vault: Vault) -> None:
    vault.pin_thread()
    try:
        with vault._write() as first:
            pass
        with vault._write() as second:
            pass
        with vault._read() as reader:
            pass
        assert first is second and reader is not first
        assert vault.engine.pool.checkedout() == 2  # held between transactions
        [made] = vault.tokenize_flows([_flow("pin@example.com")], by="sidecar")
        assert vault.detokenize(made.tokens) == ["pin@example.com"]  # type: ignore[union-attr]
    finally:
        vault.unpin_thread()
    assert vault.engine.pool.checkedout() == 0


def test_a_transaction_inside_another_takes_a_connection_of_its_own(vault: Vault) -> None:
    vault.pin_thread()
    try:
        with vault._read() as outer, vault._read() as inner:
            assert inner is not outer
    finally:
        vault.unpin_thread()


def test_an_idle_connection_is_replaced(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    vault.pin_thread()
    try:
        with vault._write() as first:
            pass
        monkeypatch.setattr(vaultbase, "PIN_IDLE_SECONDS", -1.0)
        with vault._write() as second:
            pass
        assert second is not first and first.closed
    finally:
        vault.unpin_thread()


def test_a_failed_transaction_leaves_the_pinned_connection_usable(vault: Vault) -> None:
    vault.pin_thread()
    try:
        with pytest.raises(ZeroDivisionError), vault._write():
            raise ZeroDivisionError
        [made] = vault.tokenize_flows([_flow("after@example.com")], by="sidecar")
        assert vault.detokenize(made.tokens) == ["after@example.com"]  # type: ignore[union-attr]
    finally:
        vault.unpin_thread()


def test_close_closes_what_threads_still_hold(database_url: str, master_key: bytes) -> None:
    vault = Vault.open(database_url, master_key)
    held = threading.Event()

    def reader() -> None:
        vault.pin_thread()
        with vault._read():
            pass
        held.set()  # and never unpins

    thread = threading.Thread(target=reader)
    thread.start()
    thread.join()
    assert held.is_set() and vault.engine.pool.checkedout() == 1
    pool = vault.engine.pool
    vault.close()
    assert pool.checkedout() == 0


def test_a_database_error_lets_the_pinned_connection_go(vault: Vault) -> None:
    from sqlalchemy import text

    from vault.errors import Unavailable

    vault.pin_thread()
    try:
        with vault._write() as first:
            pass
        with pytest.raises(Unavailable), vault._write() as conn:
            conn.execute(text("SELECT * FROM no_such_table"))
        assert first.closed  # let go: the next transaction takes a fresh one from the pool
        with vault._write() as second:
            pass
        assert second is not first
        [made] = vault.tokenize_flows([_flow("again@example.com")], by="sidecar")
        assert vault.detokenize(made.tokens) == ["again@example.com"]  # type: ignore[union-attr]
    finally:
        vault.unpin_thread()


@pytest.mark.pg_only
def test_postgresql_killed_under_a_pinned_connection(vault: Vault, backend: str) -> None:
    """The server drops the kept connection (a restart, an idle timeout): that transaction fails (503, fail closed),
    and the next one works on a fresh connection rather than failing for as long as the thread stays busy."""
    from sqlalchemy import text

    from vault.errors import Unavailable

    vault.pin_thread()
    try:
        with vault._write() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with vault.engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            other.commit()
        with pytest.raises(Unavailable):
            vault.tokenize_flows([_flow("killed@example.com")], by="sidecar")
        [made] = vault.tokenize_flows([_flow("killed@example.com")], by="sidecar")
        assert vault.detokenize(made.tokens) == ["killed@example.com"]  # type: ignore[union-attr]
    finally:
        vault.unpin_thread()


@pytest.mark.sqlite_only
def test_no_wait_fails_at_once_while_another_writer_holds_the_lock(vault: Vault, backend: str) -> None:
    """SQLite: a no-wait thread (the sidecar's loop) does not wait for the write lock; its connection stays usable
    and never goes back to the pool with its busy_timeout of 0."""
    import sqlite3
    import time

    from vault.errors import Unavailable

    path = vault.engine.url.database
    assert path is not None
    vault.pin_thread(no_wait=True)
    try:
        [made] = vault.tokenize_flows([_flow("first@example.com")], by="sidecar")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            start = time.monotonic()
            with pytest.raises(Unavailable):
                vault.tokenize_flows([_flow("second@example.com")], by="sidecar")
            assert time.monotonic() - start < 1.0  # not the 30 s busy_timeout of every other connection
        finally:
            other.execute("ROLLBACK")
            other.close()
        [again] = vault.tokenize_flows([_flow("second@example.com")], by="sidecar")
        assert vault.detokenize(again.tokens) == ["second@example.com"]  # type: ignore[union-attr]
    finally:
        vault.unpin_thread()
    with vault.engine.connect() as conn:  # whatever the pool hands out waits for the lock as before
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
