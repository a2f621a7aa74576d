"""The two ways the sidecar reaches the vault: in-process with group commit, and over HTTP to `tokenbunker serve`."""

from __future__ import annotations

import asyncio
import http.client
import secrets
import socket
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import waitress

from proxy_addons.vaultclient import HttpVault, InProcessVault
from vault.api import create_app
from vault.core import FlowTokenize, FlowTokens, Vault
from vault.errors import BadInput, Unavailable, VaultError
from vault.tokens import TokenRequest

ROOT = "root-token-for-proxy-tests-0123456789"


class CountingFlows:
    """Wraps Vault.tokenize_flows: counts the transactions (calls) and their sizes; the first call can be held until
    the test has queued everything, so the batching is deterministic."""

    def __init__(self, vault: Vault, hold_first: threading.Event | None = None, fail: bool = False) -> None:
        self.real = vault.tokenize_flows
        self.batches: list[int] = []
        self.hold_first = hold_first
        self.fail = fail

    def __call__(self, flows: Sequence[FlowTokenize], **kwargs: Any) -> Any:
        if not self.batches and self.hold_first is not None:
            assert self.hold_first.wait(10)
        self.batches.append(len(flows))
        if self.fail:
            raise RuntimeError("the database went away, with a value in this message: jo@example.com")
        return self.real(flows, **kwargs)


@pytest.fixture
def in_process(vault: Vault) -> Iterator[InProcessVault]:
    client = InProcessVault(vault)
    yield client
    client.close()


async def _release_after_queueing(gate: threading.Event) -> None:
    await asyncio.sleep(0)  # every tokenize coroutine has queued its flow by now
    gate.set()


def test_group_commit_takes_many_flows_per_transaction(vault: Vault, in_process: InProcessVault) -> None:
    gate = threading.Event()
    counting = CountingFlows(vault, gate)
    vault.tokenize_flows = counting  # type: ignore[method-assign]
    values = [f"user{i}@example.com" for i in range(50)]

    async def main() -> list[Any]:
        calls = [in_process.tokenize(("email", v) if i % 2 else None, [TokenRequest(v, kind="email")])
                 for i, v in enumerate(values)]
        return await asyncio.gather(*calls, _release_after_queueing(gate))

    results = asyncio.run(main())[:50]
    assert all(isinstance(r, FlowTokens) and len(r.tokens) == 1 for r in results)
    assert sum(counting.batches) == 50 and len(counting.batches) < 50, counting.batches
    assert len(counting.batches) <= 2
    assert vault.detokenize([r.tokens[0] for r in results]) == values
    for i, r in enumerate(results):
        if i % 2:
            assert r.person == vault.get_person("email", values[i])[0]
            assert vault.token_info(r.tokens[0]).subject == r.person
        else:
            assert r.person is None


def test_group_commit_without_help_still_batches(vault: Vault, in_process: InProcessVault) -> None:
    counting = CountingFlows(vault)
    vault.tokenize_flows = counting  # type: ignore[method-assign]

    async def main() -> list[FlowTokens]:
        return await asyncio.gather(*(in_process.tokenize(None, [TokenRequest(f"v{i}")]) for i in range(50)))

    results = asyncio.run(main())
    assert len({r.tokens[0] for r in results}) == 50
    assert sum(counting.batches) == 50 and len(counting.batches) < 50, counting.batches


def test_a_malformed_subject_fails_alone(vault: Vault, in_process: InProcessVault) -> None:
    gate = threading.Event()
    counting = CountingFlows(vault, gate)
    vault.tokenize_flows = counting  # type: ignore[method-assign]
    subjects: list[tuple[str, str] | None] = [("email", "a@example.com"), ("email", "not an email"), None,
                                              ("phone", "+44 7700 900123"), ("email", "b@example.com")]

    async def main() -> list[Any]:
        calls = [in_process.tokenize(s, [TokenRequest(f"value {i}")]) for i, s in enumerate(subjects)]
        return await asyncio.gather(*calls, _release_after_queueing(gate), return_exceptions=True)

    results = asyncio.run(main())[:5]
    bad = results[1]
    assert isinstance(bad, BadInput) and "subject" in bad.message and "not an email" not in bad.message
    good = [r for i, r in enumerate(results) if i != 1]
    assert all(isinstance(r, FlowTokens) for r in good)
    assert vault.detokenize([r.tokens[0] for r in good]) == ["value 0", "value 2", "value 3", "value 4"]
    assert sum(counting.batches) == 5


def test_a_failed_group_tells_every_flow_without_the_exception_text(vault: Vault, in_process: InProcessVault
                                                                     ) -> None:
    vault.tokenize_flows = CountingFlows(vault, fail=True)  # type: ignore[method-assign]

    async def main() -> list[Any]:
        calls = [in_process.tokenize(None, [TokenRequest(f"v{i}")]) for i in range(5)]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, Unavailable) for r in results)
    assert all("jo@example.com" not in r.message for r in results)


def test_in_process_detokenize_explains(vault: Vault, in_process: InProcessVault) -> None:
    [token] = vault.tokenize([TokenRequest("+44 7700 900123", kind="phone")])
    values, reasons = asyncio.run(in_process.detokenize([token, "tbk_" + "a" * 26], "masked", None))
    assert values == ["+** **** **0123", None] and reasons == [None, "unknown"]
    values, reasons = asyncio.run(in_process.detokenize([token], "plain", "sms"))
    assert values == [None] and reasons == ["consent"]


def test_close_stops_the_writer(vault: Vault) -> None:
    client = InProcessVault(vault)
    assert asyncio.run(client.tokenize(None, [TokenRequest("x")])).tokens
    client.close()
    assert not client._writer.is_alive()


# -- over HTTP -------------------------------------------------------------------------------------------------------


@pytest.fixture
def served(vault: Vault) -> Iterator[str]:
    """The vault's REST API on a real waitress server in a thread of this process; its base URL."""
    app = create_app(vault, root_token_hash=vault.keyring.api_token_hash(ROOT))
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=2)
    stop = threading.Event()

    def run() -> None:
        # server.run() loops until its sockets are gone; closing them from another thread races with its select()
        # (EBADF in the server thread). So the loop runs in short turns and the server is closed in its own thread.
        while not stop.is_set():
            waitress.wasyncore.loop(timeout=0.05, map=server._map, count=1)
        server.task_dispatcher.shutdown(timeout=5)
        for channel in list(server._map.values()):  # the listening socket and every kept-alive connection
            channel.close()

    thread = threading.Thread(target=run, name="test-waitress", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}"
    stop.set()
    thread.join(10)
    assert not thread.is_alive()


class TrackedHttpVault(HttpVault):
    """HttpVault that remembers the connections its threads open, so a test can see whether close() closed them,
    and close them itself afterwards should it not (an unclosed socket is a ResourceWarning, an error under this
    project's pytest settings, and it surfaces in whichever later test the garbage collector happens to run in)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened: list[http.client.HTTPConnection] = []
        self._opened_lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        conn = super()._connection()
        with self._opened_lock:
            if all(conn is not c for c in self.opened):
                self.opened.append(conn)
        return conn

    def close_everything(self) -> None:
        self.close()
        for conn in self.opened:
            conn.close()


@pytest.fixture
def http_vault(served: str) -> Iterator[TrackedHttpVault]:
    client = TrackedHttpVault(served, ROOT, threads=2)
    yield client
    client.close_everything()


def test_http_tokenize_with_subject(vault: Vault, http_vault: HttpVault) -> None:
    made = asyncio.run(http_vault.tokenize(("email", "Jo@Example.com"), [
        TokenRequest("Jo@Example.com", kind="email", format="email", deterministic=True),
        TokenRequest("10.1.2.3", kind="ip", ttl=3600, route="signup"),
    ]))
    person, _profile = vault.get_person("email", "jo@example.com")
    assert made.person == person and len(made.tokens) == 2
    email_info, ip_info = (vault.token_info(t) for t in made.tokens)
    assert email_info.subject == person and email_info.format == "email" and ip_info.subject == person
    assert ip_info.route == "signup" and ip_info.expires is not None and ip_info.expires - ip_info.created == 3600
    assert vault.detokenize(made.tokens) == ["Jo@Example.com", "10.1.2.3"]
    again = asyncio.run(http_vault.tokenize(("email", "jo@example.com"), [
        TokenRequest("Jo@Example.com", kind="email", format="email", deterministic=True)]))
    assert again.person == person and again.tokens == made.tokens[:1]


def test_http_tokenize_without_subject(vault: Vault, http_vault: HttpVault) -> None:
    made = asyncio.run(http_vault.tokenize(None, [TokenRequest("loose")]))
    assert made.person is None and vault.token_info(made.tokens[0]).subject is None


def test_http_detokenize_with_explain(vault: Vault, http_vault: HttpVault) -> None:
    pid = vault.create_person({"email": "jo@example.com"})
    owned, loose = vault.tokenize([TokenRequest("+44 7700 900123", kind="phone", subject=pid),
                                   TokenRequest("jo@example.com", kind="email")])
    unknown = "tbk_" + "a" * 26
    assert asyncio.run(http_vault.detokenize([owned, loose, unknown], "plain", None)) == (
        ["+44 7700 900123", "jo@example.com", None], [None, None, "unknown"])
    assert asyncio.run(http_vault.detokenize([owned], "masked", None)) == (["+** **** **0123"], [None])
    assert asyncio.run(http_vault.detokenize([owned, unknown], "plain", "sms")) == ([None, None],
                                                                                     ["consent", "unknown"])
    vault.give_consent("sms", "token", pid)
    assert asyncio.run(http_vault.detokenize([owned], "plain", "sms")) == (["+44 7700 900123"], [None])


def test_http_keeps_working_across_many_calls(http_vault: HttpVault) -> None:
    async def main() -> list[FlowTokens]:
        return await asyncio.gather(*(http_vault.tokenize(None, [TokenRequest(f"v{i}")]) for i in range(20)))

    tokens = [r.tokens[0] for r in asyncio.run(main())]
    values, _reasons = asyncio.run(http_vault.detokenize(tokens, "plain", None))
    assert values == [f"v{i}" for i in range(20)]


def test_http_close_closes_its_connections(served: str) -> None:
    client = TrackedHttpVault(served, ROOT, threads=2)
    try:
        asyncio.run(client.tokenize(None, [TokenRequest("x")]))
        assert client.opened and all(conn.sock is not None for conn in client.opened)  # kept alive
        client.close()
        assert all(conn.sock is None for conn in client.opened), "HttpVault.close() left connections open"
    finally:
        client.close_everything()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_http_down_server_is_unavailable() -> None:
    client = TrackedHttpVault(f"http://127.0.0.1:{_closed_port()}", ROOT, timeout=2)
    try:
        with pytest.raises(Unavailable):
            asyncio.run(client.tokenize(None, [TokenRequest("x")]))
        with pytest.raises(Unavailable):
            asyncio.run(client.detokenize(["tbk_" + "a" * 26], "plain", None))
    finally:
        client.close_everything()


def test_http_400_is_a_vault_error_with_its_message(http_vault: HttpVault) -> None:
    with pytest.raises(VaultError) as caught:
        asyncio.run(http_vault.tokenize(("email", "not an email"), [TokenRequest("x")]))
    assert not isinstance(caught.value, Unavailable)
    assert caught.value.status == 400 and caught.value.message.startswith("subject:")
    with pytest.raises(VaultError) as caught:
        asyncio.run(http_vault.detokenize(["x"], "plain", "Not A Purpose!"))
    assert caught.value.status == 400 and caught.value.message


def test_http_wrong_token_is_a_vault_error(served: str) -> None:
    client = TrackedHttpVault(served, "not-the-root-token-at-all")
    try:
        with pytest.raises(VaultError) as caught:
            asyncio.run(client.tokenize(None, [TokenRequest("x")]))
        assert caught.value.status == 401 and "X-Bunker-Token" in caught.value.message
    finally:
        client.close_everything()


def test_http_vault_url_must_be_http() -> None:
    with pytest.raises(BadInput):
        HttpVault("ftp://vault.internal", secrets.token_hex(8))


def test_a_cancelled_flow_does_not_stop_the_writer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A client that hangs up cancels its flow's future; the writer thread must go on serving the others."""
    import asyncio
    import secrets

    from proxy_addons.vaultclient import InProcessVault
    from vault.core import Vault
    from vault.tokens import TokenRequest

    client = InProcessVault(Vault.open(f"sqlite:///{tmp_path / 'v.db'}", secrets.token_bytes(32)))

    async def scenario() -> None:
        doomed = asyncio.ensure_future(client.tokenize(None, [TokenRequest("a")]))
        await asyncio.sleep(0)
        doomed.cancel()
        for _ in range(5):
            made = await asyncio.wait_for(client.tokenize(None, [TokenRequest("b")]), timeout=10)
            assert len(made.tokens) == 1

    try:
        asyncio.run(scenario())
        assert client._writer.is_alive()
    finally:
        client.close()


def _det(value: str) -> list[TokenRequest]:
    return [TokenRequest(value, kind="email", format="email", deterministic=True, route="signup")]


def test_a_repeat_comes_from_the_cache_and_is_still_audited(vault: Vault, in_process: InProcessVault) -> None:
    from sqlalchemy import select

    from vault.models import audit_table

    counting = CountingFlows(vault)
    vault.tokenize_flows = counting  # type: ignore[method-assign]
    subject = ("email", "cached@example.com")

    async def main() -> list[FlowTokens]:
        return [await in_process.tokenize(subject, _det("cached@example.com")) for _ in range(5)]

    results = asyncio.run(main())
    assert len(counting.batches) == 1  # the first flow went to the vault, the other four were cache hits
    assert {r.tokens[0] for r in results} == {results[0].tokens[0]} and {r.person for r in results} == {
        results[0].person}
    in_process.flush_audit()
    with vault.engine.connect() as conn:
        rows = [r for r in conn.execute(select(audit_table).order_by(audit_table.c.seq)) if r.action == "tokenize"]
    assert [(r.route, r.person_id) for r in rows] == [("signup", results[0].person)] * 2  # 1 flow, then 4 coalesced
    assert all(b"cached@" not in (r.detail or b"") for r in rows)


def test_a_person_forgotten_elsewhere_leaves_the_cache_at_the_next_flush(vault: Vault, in_process: InProcessVault
                                                                         ) -> None:
    subject = ("email", "gone@example.com")

    async def tokenize() -> FlowTokens:
        return await in_process.tokenize(subject, _det("gone@example.com"))

    first = asyncio.run(tokenize())
    asyncio.run(tokenize())  # a hit: served from the cache
    other = Vault(vault.engine, vault.keyring)  # another process' view of the same database
    other.forget_person("email", "gone@example.com")
    in_process.flush_audit()  # the writer finds the person gone and drops what it cached of them
    again = asyncio.run(tokenize())
    assert again.person != first.person and again.tokens != first.tokens  # made anew by the vault, not the cache
    assert vault.detokenize(again.tokens) == ["gone@example.com"]


def test_reveals_and_hits_are_refused_while_the_audit_trail_cannot_be_written(vault: Vault,
                                                                              in_process: InProcessVault) -> None:
    [made] = vault.tokenize_flows([FlowTokenize(None, [TokenRequest("x@example.com", kind="email")])])
    assert isinstance(made, FlowTokens)

    def broken(_rows: Any) -> None:
        raise Unavailable("database unavailable")

    real = vault.record_audit
    vault.record_audit = broken  # type: ignore[method-assign]
    values, _reasons = asyncio.run(in_process.detokenize(made.tokens, "plain", None, "crm"))
    assert values == ["x@example.com"]
    with pytest.raises(Unavailable):
        in_process.flush_audit()
    with pytest.raises(Unavailable):
        asyncio.run(in_process.detokenize(made.tokens, "plain", None, "crm"))
    vault.record_audit = real  # type: ignore[method-assign]
    in_process.flush_audit()  # the kept rows are written; reveals go on
    assert asyncio.run(in_process.detokenize(made.tokens, ["masked"], None, "crm"))[0] != [None]


def test_audit_wait_reveals_in_the_transaction_that_records_them(vault: Vault) -> None:
    [made] = vault.tokenize_flows([FlowTokenize(None, [TokenRequest("y@example.com", kind="email"),
                                                       TokenRequest("Yan", kind="name")])])
    assert isinstance(made, FlowTokens)
    client = InProcessVault(vault, audit_wait=True)
    try:
        values, reasons = asyncio.run(client.detokenize(made.tokens, ["plain", "masked"], None, "crm"))
    finally:
        client.close()
    assert values[0] == "y@example.com" and values[1] not in (None, "Yan") and reasons == [None, None]


# -- a flow the proxy handles alone: its transaction on the loop (SQLite), else the writer's ---------------------


class ThreadsOf:
    """Wraps a Vault method: records the thread each call ran on."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.threads: list[str] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.threads.append(threading.current_thread().name)
        return self.real(*args, **kwargs)


def test_a_flow_alone_is_written_on_the_loop_on_sqlite(vault: Vault, in_process: InProcessVault, backend: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls = ThreadsOf(vault.tokenize_flows)
    monkeypatch.setattr(vault, "tokenize_flows", calls)
    in_process.alone = lambda: True
    made = asyncio.run(in_process.tokenize(("email", "alone@example.com"),
                                           [TokenRequest("alone@example.com", kind="email", format="email")]))
    assert vault.detokenize(made.tokens) == ["alone@example.com"]
    # PostgreSQL: never on the loop (a round trip per statement would stall every other connection).
    assert calls.threads == (["MainThread"] if backend == "sqlite" else ["tokenbunker-writer"])
    in_process.alone = lambda: False
    asyncio.run(in_process.tokenize(("email", "crowd@example.com"),
                                    [TokenRequest("crowd@example.com", kind="email", format="email")]))
    assert calls.threads[-1] == "tokenbunker-writer"


@pytest.mark.sqlite_only
def test_a_flow_alone_goes_to_the_writer_while_the_write_lock_is_held(vault: Vault, in_process: InProcessVault,
                                                                      backend: str) -> None:
    """Another writer (another process) holds SQLite's write lock: the loop does not wait for it; the writer thread
    does, and the flow goes on once the lock is free."""
    import sqlite3

    path = vault.engine.url.database
    assert path is not None
    in_process.alone = lambda: True
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")

    async def run() -> FlowTokens:
        task = asyncio.ensure_future(in_process.tokenize(
            ("email", "locked@example.com"), [TokenRequest("locked@example.com", kind="email", format="email")]))
        await asyncio.sleep(0.3)
        assert not task.done()  # waiting in the writer thread, not refused, and the loop is free meanwhile
        other.execute("ROLLBACK")
        return await task

    try:
        made = asyncio.run(run())
    finally:
        other.close()
    assert vault.detokenize(made.tokens) == ["locked@example.com"]


def test_a_reveal_alone_is_read_and_audited_on_the_loop(vault: Vault, backend: str) -> None:
    client = InProcessVault(vault, audit_wait=True)
    try:
        [made] = vault.tokenize_flows([FlowTokenize(("email", "shown@example.com"),
                                                    [TokenRequest("shown@example.com", kind="email")])])
        assert isinstance(made, FlowTokens)
        calls = ThreadsOf(vault.reveal_flows)
        vault.reveal_flows = calls  # type: ignore[method-assign]
        client.alone = lambda: True
        values, _reasons = asyncio.run(client.detokenize(made.tokens, "plain", None, "r1"))
        assert values == ["shown@example.com"]
        assert calls.threads == (["MainThread"] if backend == "sqlite" else ["tokenbunker-writer"])
        _total, rows = vault.audit_trail(made.person, 0, 10)
        assert [(r["action"], r["who"], r["route"]) for r in rows][0] == ("reveal", "sidecar", "r1")  # committed
        assert vault.verify_audit().intact
    finally:
        client.close()


def _shown(vault: Vault, value: str) -> FlowTokens:
    [made] = vault.tokenize_flows([FlowTokenize(("email", value), [TokenRequest(value, kind="email")])])
    assert isinstance(made, FlowTokens)
    return made


def test_buffered_reveals_alone_are_read_on_the_loop(vault: Vault, in_process: InProcessVault, backend: str) -> None:
    made = _shown(vault, "buffered@example.com")
    calls = ThreadsOf(vault.read_flows)
    vault.read_flows = calls  # type: ignore[method-assign]
    in_process.alone = lambda: True
    values, _reasons = asyncio.run(in_process.detokenize(made.tokens, "masked", None, "r2"))
    assert values == [vault.detokenize(made.tokens, "masked")[0]] and values != ["buffered@example.com"]
    # PostgreSQL: never on the loop, as for writes.
    assert calls.threads == (["MainThread"] if backend == "sqlite" else ["tokenbunker-reader"])
    in_process.alone = lambda: False
    asyncio.run(in_process.detokenize(made.tokens, "plain", None, "r2"))
    assert calls.threads[-1] == "tokenbunker-reader"
    in_process.flush_audit()  # buffered: the reveals are in the trail once the buffer is written
    _total, rows = vault.audit_trail(made.person, 0, 10)
    reveals = [r for r in rows if r["action"] == "reveal"]
    assert reveals and {r["route"] for r in reveals} == {"r2"}
    counts = [vault.audit_event(r["atoken"])["detail"]["count"] for r in reveals]
    assert sum(counts) == 2
    assert vault.verify_audit().intact


def test_buffered_reveals_waiting_together_are_read_in_one_go(vault: Vault, in_process: InProcessVault) -> None:
    made = [_shown(vault, f"crowd{i}@example.com") for i in range(20)]
    gate = threading.Event()
    batches: list[int] = []
    real = vault.read_flows

    def counting(flows: Sequence[Any], **kwargs: Any) -> Any:
        if not batches:
            assert gate.wait(10)
        batches.append(len(flows))
        return real(flows, **kwargs)

    vault.read_flows = counting  # type: ignore[method-assign]

    async def main() -> list[Any]:
        calls = [in_process.detokenize(m.tokens, "plain", None, "r3") for m in made]
        calls.append(in_process.detokenize(made[0].tokens, "plain", "not a purpose!", "r3"))
        return await asyncio.gather(*calls, _release_after_queueing(gate), return_exceptions=True)

    results = asyncio.run(main())[:21]
    assert [r[0] for r in results[:20]] == [[f"crowd{i}@example.com"] for i in range(20)]
    assert isinstance(results[20], BadInput)  # a malformed purpose fails that flow alone
    assert sum(batches) == 21 and len(batches) <= 2, batches
