"""Callbacks: a worker that delivers the outbox (vault/events.py) to the backend, signed, with retries.

Each event is POSTed as its stored JSON body to the URL configured for it, with these headers:

    Content-Type: application/json
    X-Tokenbunker-Event: profilenew
    X-Tokenbunker-Event-Id: 5b0c...        (also "event_id" in the body: the same on every attempt)
    X-Tokenbunker-Timestamp: 1800000000    (unix seconds when this attempt was signed)
    X-Tokenbunker-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body bytes>")>

A receiver recomputes the HMAC over the timestamp header, a dot and the raw body with the shared secret
(TOKENBUNKER_CALLBACKS_SECRET), compares in constant time, rejects a timestamp more than a few minutes from its own
clock (a replayed request), and drops an event id it has already handled (delivery is at least once). See
`check_signature`. Any 2xx is success; anything else (redirects too) is retried with exponential backoff and jitter
until `max_attempts`, then the event is marked failed (tb_outbox.failed_at) and counted in /v1/metrics.

Replicas on one PostgreSQL share the outbox without double-sending: a short transaction claims a batch with
SELECT ... FOR UPDATE SKIP LOCKED and leases it (next_attempt_at moves past the time the batch can take), the sends
happen outside any transaction, and each result is written after. A replica that dies mid-batch leaves a lease that
runs out, and another sends those events again (at least once). A stopping worker hands its unsent claims back.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select, update

from vault.config import CallbackSettings, ConfigError
from vault.events import EVENTS
from vault.models import outbox_table as outbox

if TYPE_CHECKING:
    from vault.core import Vault

log = logging.getLogger("tokenbunker.callbacks")
SECRET_ENV = "TOKENBUNKER_CALLBACKS_SECRET"
MIN_SECRET_CHARS = 16
TOLERANCE_SECONDS = 300
HEADER_EVENT = "X-Tokenbunker-Event"
HEADER_EVENT_ID = "X-Tokenbunker-Event-Id"
HEADER_TIMESTAMP = "X-Tokenbunker-Timestamp"
HEADER_SIGNATURE = "X-Tokenbunker-Signature"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    return "v1=" + hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def check_signature(secret: bytes, headers: Mapping[str, str], body: bytes, now: float,
                    tolerance: int = TOLERANCE_SECONDS) -> bool:
    """What a receiver does: a fresh timestamp and a matching signature, compared in constant time."""
    stamp = headers.get(HEADER_TIMESTAMP, "")
    if not stamp.isdigit() or abs(now - int(stamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, int(stamp), body), headers.get(HEADER_SIGNATURE, ""))


@dataclass(frozen=True)
class Delivery:
    """The worker's settings, resolved: a URL per event that has one, the secret, the retry policy."""

    urls: Mapping[str, str] = field(repr=False)  # a URL may carry a credential
    secret: bytes = field(repr=False)
    timeout: float = 10.0
    max_attempts: int = 12
    backoff: float = 2.0
    max_backoff: float = 3600.0
    poll: float = 1.0
    batch: int = 10

    @classmethod
    def from_config(cls, settings: CallbackSettings, env: Mapping[str, str]) -> Delivery | None:
        """None when no callback URL is configured: events then stay queued in the outbox until one is."""
        urls = {event: url for event in EVENTS if (url := settings.url_for(event))}
        if not urls:
            return None
        secret = env.get(SECRET_ENV, "")
        if len(secret) < MIN_SECRET_CHARS:
            raise ConfigError(f"callbacks: a URL is configured, so {SECRET_ENV} must be set (at least "
                              f"{MIN_SECRET_CHARS} characters) to sign them")
        return cls(urls, secret.encode(), settings.timeout_seconds, settings.max_attempts,
                   settings.backoff_seconds, settings.max_backoff_seconds, settings.poll_seconds)

    @property
    def lease(self) -> int:
        """How long a claimed batch is kept from other replicas: longer than sending all of it can take."""
        return math.ceil(self.timeout * self.batch) + 30

    def retry_delay(self, attempts: int) -> float:
        """Exponential backoff with jitter: about backoff * 2^(attempts-1), capped, drawn from its upper half."""
        base: float = min(self.max_backoff, self.backoff * 2 ** min(attempts - 1, 40))
        return base * random.uniform(0.5, 1.0)


# -- the outbox, one short transaction each (called through the Vault) ------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    seq: int
    event_id: str
    event: str
    body: str
    attempts: int


def claim(conn: Connection, events: Collection[str], now: int, lease: int, batch: int) -> list[Claimed]:
    query = (select(outbox.c.seq, outbox.c.event_id, outbox.c.event, outbox.c.body, outbox.c.attempts)
             .where(outbox.c.delivered_at.is_(None), outbox.c.failed_at.is_(None), outbox.c.next_attempt_at <= now,
                    outbox.c.event.in_(list(events)))
             .order_by(outbox.c.seq).limit(batch)
             .with_for_update(skip_locked=True))  # PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises
    rows = [Claimed(*row) for row in conn.execute(query)]
    if rows:
        conn.execute(update(outbox).where(outbox.c.seq.in_([r.seq for r in rows]))
                     .values(next_attempt_at=now + lease))
    return rows


def settle(conn: Connection, seq: int, attempts: int, now: int, error: str | None, next_at: int | None) -> None:
    """One attempt's result: delivered (error None), to retry at `next_at`, or failed for good (next_at None)."""
    if error is None:
        values: dict[str, Any] = {"attempts": attempts, "delivered_at": now, "last_error": None}
    elif next_at is None:
        values = {"attempts": attempts, "failed_at": now, "last_error": error[:200]}
    else:
        values = {"attempts": attempts, "next_attempt_at": next_at, "last_error": error[:200]}
    conn.execute(update(outbox).where(outbox.c.seq == seq).values(**values))


def release(conn: Connection, seqs: list[int], now: int) -> None:
    conn.execute(update(outbox).where(outbox.c.seq.in_(seqs), outbox.c.delivered_at.is_(None))
                 .values(next_attempt_at=now))


# -- sending ----------------------------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None  # a 3xx is an answer, not a success: it is retried like any other non-2xx


@functools.cache
def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_NoRedirect)  # on first use: it loads the CA store (~35 ms of every start-up)


Sender = Callable[[str, bytes, dict[str, str], float], str | None]


def http_send(url: str, body: bytes, headers: dict[str, str], timeout: float) -> str | None:
    """POST; None on a 2xx, else a short reason that names neither the URL nor the body."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _opener().open(request, timeout=timeout) as answer:
            answer.read(65536)
            status = answer.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return f"unreachable ({type(exc.reason).__name__})"
    except (OSError, ValueError) as exc:
        return f"failed ({type(exc).__name__})"
    return None if 200 <= status < 300 else f"HTTP {status}"


class Worker:
    """The delivery loop, in a thread of `tokenbunker serve`. Nothing waits on it: the API only writes rows."""

    def __init__(self, vault: Vault, delivery: Delivery, *, send: Sender = http_send,
                 clock: Callable[[], float] = time.time) -> None:
        self.vault = vault
        self.delivery = delivery
        self._send = send
        self._clock = clock
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """Claim one batch and try each event once; how many were tried."""
        d = self.delivery
        claimed = self.vault.claim_callbacks(list(d.urls), d.lease, d.batch)
        for i, row in enumerate(claimed):
            if self._stopping.is_set():
                self.vault.release_callbacks([r.seq for r in claimed[i:]])
                return i
            self._attempt(row)
        return len(claimed)

    def _attempt(self, row: Claimed) -> None:
        d = self.delivery
        body = row.body.encode()
        stamp = int(self._clock())
        headers = {"Content-Type": "application/json", "User-Agent": "tokenbunker-callbacks/1",
                   HEADER_EVENT: row.event, HEADER_EVENT_ID: row.event_id, HEADER_TIMESTAMP: str(stamp),
                   HEADER_SIGNATURE: sign(d.secret, stamp, body)}
        error = self._send(d.urls[row.event], body, headers, d.timeout)
        attempts = row.attempts + 1
        next_at = None
        if error is not None and attempts < d.max_attempts:
            next_at = math.ceil(self.vault.now() + d.retry_delay(attempts))  # on the clock the claims read
            log.warning("callback %s (%s) attempt %d failed: %s; retrying", row.event_id, row.event, attempts, error)
        elif error is not None:
            log.error("callback %s (%s) failed %d times (%s); given up", row.event_id, row.event, attempts, error)
        self.vault.settle_callback(row.seq, attempts, error, next_at)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                tried = self.run_once()
            except Exception as exc:  # the database is down, say: try again later, never die
                log.warning("callback worker: %s; retrying in %.0f s", type(exc).__name__, self.delivery.poll)
                tried = 0
            if tried == 0:
                self._stopping.wait(self.delivery.poll)

    def start(self) -> Worker:
        self._thread = threading.Thread(target=self._loop, name="tokenbunker-callbacks", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 3.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
