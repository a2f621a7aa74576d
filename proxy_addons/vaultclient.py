"""How the sidecar reaches the vault without blocking mitmproxy's event loop.

In-process: one writer thread does group commit (every flow waiting when it wakes goes into one transaction), and
one reader thread groups the buffered reveals' reads the same way. Over HTTP: a `tokenbunker serve` called from a
thread pool with keep-alive connections. Both answer the same two coroutines.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import queue
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from typing import Any, Protocol

from proxy_addons.auditbuffer import AuditBuffer
from proxy_addons.tokencache import TokenCache
from vault.audit import Event
from vault.core import FlowReveal, FlowTokenize, FlowTokens, Vault
from vault.errors import BadInput, Unavailable, VaultError
from vault.tokens import TokenRequest

log = logging.getLogger("tokenbunker.proxy")
GROUP_MAX = 256  # flows per group-commit transaction
# A transaction may run on the loop (see _may_inline) only for this many values: a bulk message's would hold every
# other connection for tens of milliseconds.
INLINE_MAX_VALUES = 32
ACTOR = "sidecar"  # who acted, in the audit trail, for an in-process vault (over HTTP: the token's name)


class VaultClient(Protocol):
    async def tokenize(self, subject: tuple[str, str] | None, items: Sequence[TokenRequest]) -> FlowTokens: ...

    async def detokenize(
        self, tokens: Sequence[str], reveal: str | Sequence[str], purpose: str | None, route: str | None = None
    ) -> tuple[list[str | None], list[str | None]]:
        """`reveal`: "plain" or "masked" for every token, or one of them per token."""
        ...

    def close(self) -> None: ...


class InProcessVault:
    """Vault work off mitmproxy's loop, in as few thread hops as the flow allows.

    - Tokenize jobs go to one writer thread, which takes whatever is waiting into one transaction (group commit);
      the flow goes on once its tokens are committed, with their audit rows in the same transaction.
    - A flow whose tokens are all deterministic and were seen in the last seconds is answered from `TokenCache`
      on the loop itself: no hop, no transaction (proxy_addons/tokencache.py says why that is safe).
    - Reveals are read by one reader thread, which takes every reveal waiting into one read (no transaction), as
      the writer groups its commits; a flow the proxy handles alone is read on the loop (SQLite). Their audit rows,
      and those of cache hits, are coalesced in `AuditBuffer` and written by the writer thread within
      FLUSH_SECONDS; while such a write fails, these flows are refused (fail closed). With `audit_wait=True`, a
      reveal instead waits for its audit rows: it is read in the writer's group transaction that records it (one
      hop, one transaction per group).
    """

    def __init__(self, vault: Vault, *, audit_wait: bool = False, cache: TokenCache | None = None) -> None:
        self.vault = vault
        self.audit_wait = audit_wait
        self.cache = cache if cache is not None else TokenCache()
        self.audit = AuditBuffer()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._reads: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._reading = False  # the reader is between taking a batch and answering it
        # Transactions of a flow the proxy handles alone may run on the loop itself (_may_inline); SQLite only, where
        # a write lock held elsewhere is seen at once rather than waited for on the loop. `alone` is the addon's.
        self._inline_ok = vault.engine.dialect.name == "sqlite"
        self.alone: Callable[[], bool] = lambda: False
        self._loop_pinned = False
        self._working = False  # the writer is between taking a batch and answering it
        self._writer = threading.Thread(target=self._write_loop, name="tokenbunker-writer", daemon=True)
        self._writer.start()
        self._reader = threading.Thread(target=self._read_loop, name="tokenbunker-reader", daemon=True)
        self._reader.start()

    def _check_audit(self) -> None:
        if self.audit.failing:
            raise Unavailable("the audit trail cannot be written")

    async def tokenize(self, subject: tuple[str, str] | None, items: Sequence[TokenRequest]) -> FlowTokens:
        hit = self.cache.lookup(subject, items)
        if hit is not None:
            self._check_audit()
            kinds = sorted({r.kind for r in items})
            self._add_audit([Event(ACTOR, "tokenize", hit.person, hit.person_key, "ok", items[0].route,
                                   {"kinds": kinds, "count": len(items)})])
            return hit
        work = FlowTokenize(subject, items)
        result = await self._write_job(self._tokenize, work, len(items))
        self.cache.remember(subject, items, result)
        return result  # type: ignore[no-any-return]

    async def _write_job(self, run: Callable[[list[Any]], Sequence[Any]], work: Any, size: int) -> Any:
        """`work` (of `size` values) in a transaction on the loop when the flow may have one there (see _may_inline)
        and it is small, else on the writer thread with its group."""
        result = self._inline(run, work) if size <= INLINE_MAX_VALUES and self._may_inline() else _HAND_OVER
        if result is _HAND_OVER:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._jobs.put((work, future))
            return await future
        if isinstance(result, BaseException):
            raise result
        return result

    async def detokenize(
        self, tokens: Sequence[str], reveal: str | Sequence[str], purpose: str | None, route: str | None = None
    ) -> tuple[list[str | None], list[str | None]]:
        if self.audit_wait:
            # One hop to the writer, read and audited in its group's transaction (or that transaction here).
            work = FlowReveal(tokens, reveal, purpose, route)
            result: tuple[list[str | None], list[str | None]] = await self._write_job(self._reveal, work, len(tokens))
            return result
        self._check_audit()
        work = FlowReveal(tokens, reveal, purpose, route)
        # Alone, on the loop: a read never waits for a writer under WAL, and costs less than the two hand-offs.
        found = self._inline(self._read_flows, work) if self._inline_ok and not self._reading and \
            self._reads.empty() and len(tokens) <= INLINE_MAX_VALUES and self.alone() else _HAND_OVER
        if found is _HAND_OVER:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._reads.put((work, future))
            found = await future
        elif isinstance(found, BaseException):
            raise found
        values, reasons, rows = found
        self._add_audit(rows)
        return values, reasons

    def _may_inline(self) -> bool:
        """Whether this flow's transaction may run here, on the loop: SQLite, the proxy handling this flow alone
        (`alone`, from the addon), the writer idle with nothing queued. Then the two thread hand-offs cost more
        than the transaction itself (measured: ~0.4 ms of CPU per flow at concurrency 1), and there is no group to
        join. Under load flows keep going to the writer, whose group commit shares a transaction among them."""
        return self._inline_ok and not self._working and self._jobs.empty() and self.alone()

    def _inline(self, work: Callable[[list[Any]], Sequence[Any]], item: Any) -> Any:
        """The writer's (or reader's) work for one flow, on this thread, on connections that never wait for SQLite's
        locks: when another writer (this process's writer thread, another process) holds the write lock, or the
        call fails in any other way, _HAND_OVER: the flow goes to the thread as it would have, which waits for the
        lock or fails the flow closed. Nothing of a failed attempt was committed (SQLite rolls it back whole)."""
        if not self._loop_pinned:
            self.vault.pin_thread(no_wait=True)
            self._loop_pinned = True
        try:
            [result] = work([item])
        except Exception:  # noqa: BLE001 - whatever it was, the writer thread tries again and answers as always
            return _HAND_OVER
        return result

    def flush_audit(self, timeout: float = 10.0) -> None:
        """Write the pending audit rows now and wait for it (tests, and callers that read the trail at once);
        raises what the write raised. Not for mitmproxy's loop: it blocks."""
        future: Future[Any] = Future()
        self._jobs.put(("flush", future))
        future.result(timeout)

    def _add_audit(self, rows: Sequence[Event]) -> None:
        if self.audit.add(rows):
            self._jobs.put(_FLUSH)

    def _read_flows(self, flows: list[Any]) -> Sequence[Any]:
        return self.vault.read_flows(flows, by=ACTOR)

    def _read_loop(self) -> None:
        """The reader thread: every reveal waiting is read in one go and answered with one wake-up per loop."""
        self.vault.pin_thread()
        try:
            while (job := self._reads.get()) is not None:
                self._reading = True
                _answer(self._run_group(_take_group(job, self._reads), self._read_flows))
                self._reading = False
        finally:
            self.vault.unpin_thread()

    def _write_loop(self) -> None:
        self.vault.pin_thread()  # one connection for this thread's transactions, not a checkout for each
        try:
            self._write_jobs()
        finally:
            self.vault.unpin_thread()

    def _write_jobs(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.audit.wait())
            except queue.Empty:
                job = _FLUSH
            if job is None:
                self._flush()
                return
            self._working = True
            batch = _take_group(job, self._jobs)
            flows = [(work, future) for work, future in batch if isinstance(work, FlowTokenize)]
            reveals = [(work, future) for work, future in batch if isinstance(work, FlowReveal)]
            answers: list[tuple[asyncio.Future[Any], Any]] = []
            if flows:
                answers += self._run_group(flows, self._tokenize)
            if reveals:
                answers += self._run_group(reveals, self._reveal)
            if answers:
                _answer(answers)
            self._working = False
            asked = [future for work, future in batch if work == "flush"]
            if asked or self.audit.wait() == 0.0:
                self._flush()
                for future in asked:
                    if future is not None:
                        _settle(future, Unavailable("the audit trail cannot be written") if self.audit.failing
                                else None)

    def _tokenize(self, flows: list[Any]) -> Sequence[Any]:
        return self.vault.tokenize_flows(flows, by=ACTOR)

    def _reveal(self, flows: list[Any]) -> Sequence[Any]:
        return self.vault.reveal_flows(flows, by=ACTOR)

    def _flush(self) -> None:
        """Record the coalesced audit rows; then drop from the cache what the vault no longer has."""
        rows = self.audit.take()
        if rows:
            try:
                self.vault.record_audit(rows)
                self.audit.failing = False
            except BaseException as exc:  # the database is down or refuses: keep the rows, refuse such flows
                self.audit.put_back(rows)
                if not self.audit.failing:
                    log.warning("tokenbunker: the audit trail cannot be written (%s); reveals and cached "
                                "tokenizing are refused until it can", type(exc).__name__)
                self.audit.failing = True
                return
        people, tokens = self.cache.take_served()
        if people or tokens:
            try:
                people_left, tokens_left = self.vault.still_there(people, tokens)
            except BaseException:  # cannot tell: forget everything cached rather than serve what may be gone
                self.cache.clear()
                return
            self.cache.drop_missing(people - people_left, tokens - tokens_left)

    @staticmethod
    def _run_group(jobs: list[_Job], work: Callable[[list[Any]], Sequence[Any]]
                   ) -> list[tuple[asyncio.Future[Any], Any]]:
        try:
            results: Sequence[Any] = work([item for item, _ in jobs])
        except BaseException as exc:  # the whole group failed (database down): every flow hears it
            results = [exc if isinstance(exc, VaultError) else Unavailable("vault error")] * len(jobs)
        return [(future, result) for (_, future), result in zip(jobs, results, strict=True)]

    def close(self) -> None:
        self._jobs.put(None)
        self._writer.join(timeout=5)
        self._reads.put(None)
        self._reader.join(timeout=5)
        self.vault.close()


_Job = tuple[FlowTokenize | FlowReveal, "asyncio.Future[Any]"]
_FLUSH: Any = ("flush", None)  # a job that asks the writer to write the pending audit rows now (None: no one waits)
_HAND_OVER: Any = object()  # _inline: not done here, to the writer (or reader) thread


def _take_group(first: Any, jobs: queue.SimpleQueue[Any]) -> list[Any]:
    """`first` and every job waiting behind it, up to GROUP_MAX; a stop (None) met on the way is put back, to be
    taken once this group is answered."""
    group = [first]
    while len(group) < GROUP_MAX:
        try:
            more = jobs.get_nowait()
        except queue.Empty:
            break
        if more is None:
            jobs.put(None)
            break
        group.append(more)
    return group


def _answer(answers: list[tuple[asyncio.Future[Any], Any]]) -> None:
    """Hand a group's answers to the event loops waiting for them: one wake-up per loop and group, not one per
    flow (each call_soon_threadsafe writes to the loop's self-pipe)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for future, result in answers:
        by_loop.setdefault(future.get_loop(), []).append((future, result))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_all, items)
        except RuntimeError:  # that loop is closed: no one is waiting any more
            pass


def _settle_all(items: list[tuple[asyncio.Future[Any], Any]]) -> None:
    """On the loop: answer each waiting flow; one that went away meanwhile (its client hung up, so its future was
    cancelled) is skipped."""
    for future, result in items:
        if future.done():
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


def _settle(future: Future[Any], result: Any) -> None:
    """Answer a waiting flow; one that went away meanwhile (its client hung up, so its future was cancelled) is
    skipped rather than allowed to stop the writer thread that serves every other flow."""
    try:
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class HttpVault:
    """A `tokenbunker serve` at `url`, called with a token scoped to what the rules need."""

    def __init__(self, url: str, token: str, threads: int = 8, timeout: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise BadInput("proxy.vault_url must be an http:// or https:// URL")
        self._scheme = parsed.scheme
        self._host = parsed.hostname
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._base = parsed.path.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._local = threading.local()
        self._open: set[http.client.HTTPConnection] = set()
        self._open_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tokenbunker-http")

    async def tokenize(self, subject: tuple[str, str] | None, items: Sequence[TokenRequest]) -> FlowTokens:
        body: dict[str, Any] = {"items": [_item(r) for r in items]}
        if subject is not None:
            body["subject"] = {"index": subject[0], "value": subject[1]}
        answer = await self._call("/v1/tokenize", body)
        return FlowTokens(answer.get("subject"), list(answer["tokens"]))

    async def detokenize(
        self, tokens: Sequence[str], reveal: str | Sequence[str], purpose: str | None, route: str | None = None
    ) -> tuple[list[str | None], list[str | None]]:
        if not isinstance(reveal, str):  # the API takes one mode per call: one call per mode, side by side
            modes = list(reveal)
            parts = {m: [i for i, mode in enumerate(modes) if mode == m] for m in dict.fromkeys(modes)}
            answers = await asyncio.gather(*(self.detokenize([tokens[i] for i in at], m, purpose, route)
                                             for m, at in parts.items()))
            values: list[str | None] = [None] * len(modes)
            reasons: list[str | None] = [None] * len(modes)
            for at, (vals, why) in zip(parts.values(), answers, strict=True):
                for i, v, r in zip(at, vals, why, strict=True):
                    values[i], reasons[i] = v, r
            return values, reasons
        body: dict[str, Any] = {"tokens": list(tokens), "reveal": reveal, "explain": True}
        if purpose is not None:
            body["purpose"] = purpose
        if route is not None:
            body["route"] = route  # named in the vault's audit trail
        answer = await self._call("/v1/detokenize", body)
        return list(answer["values"]), list(answer["reasons"])

    def tokenize_sync(self, items: Sequence[TokenRequest]) -> list[tuple[str, int | None]]:
        """For callers without an event loop (the log scrubber): tokens and their expiries."""
        answer = self._post("/v1/tokenize", json.dumps({"items": [_item(r) for r in items], "expiry": True}).encode())
        return list(zip(answer["tokens"], answer["expires"], strict=True))

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._post, path, json.dumps(body).encode())

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self._timeout)
            self._local.conn = conn
            with self._open_lock:
                self._open.add(conn)
        return conn

    def _post(self, path: str, payload: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "X-Bunker-Token": self._token}
        for attempt in (1, 2):  # a kept-alive connection the server closed meanwhile gets one fresh retry
            conn = self._connection()
            try:
                conn.request("POST", self._base + path, payload, headers)
                response = conn.getresponse()
                raw = response.read()
                status = response.status
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                with self._open_lock:
                    self._open.discard(conn)
                if attempt == 2:
                    raise Unavailable("the vault cannot be reached") from None
        try:
            answer = json.loads(raw)
        except ValueError:
            raise Unavailable(f"the vault answered {status} without JSON") from None
        if status != 200:
            error = VaultError(str(answer.get("message", "vault error"))[:200])
            error.status = status
            raise error
        return answer  # type: ignore[no-any-return]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._open_lock:
            for conn in self._open:
                conn.close()
            self._open.clear()


def _item(req: TokenRequest) -> dict[str, Any]:
    item: dict[str, Any] = {"value": req.value, "kind": req.kind, "format": req.format}
    if req.deterministic:
        item["deterministic"] = True
    if req.ttl:
        item["ttl"] = f"{req.ttl}s"
    if req.route:
        item["route"] = req.route
    return item
