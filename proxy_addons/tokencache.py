"""A short-lived, bounded in-process cache of deterministic tokens, so a repeat flow needs no trip to the vault.

What it holds: (kind, format, value) -> (token, its owner, until when), and (index mode, subject value) ->
(person, their data key id, until when), keyed by a BLAKE2b digest under a random per-process key (the plain
values are never kept as keys, and the digests mean nothing outside this process). Only what the vault itself
answered goes in, after its transaction committed.

Why it is safe (docs/sidecar.md, "The cache of deterministic tokens"):
- An entry never outlives its token: it dies at the token's expiry or TTL_SECONDS after it was stored, whichever
  comes first, and the writer drops the entries of people and tokens it no longer finds (forgotten, deleted or
  expired by another process) each time it writes the coalesced audit rows, a fraction of a second later.
- A hit writes nothing but an audit count: it cannot re-create a forgotten person, a deleted token or an owner.
  A flow whose tokens would change the vault (a new value, an unowned token its subject would adopt, a
  non-deterministic rule) misses and takes the normal path.
- A token served from the cache after another process forgot its person (at most until the next flush or the
  TTL) stands for nothing, like every other token of theirs the app already holds: it reveals nothing, ever.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from vault.core import FlowTokens
from vault.formats import TOKEN_PATTERN
from vault.identity import INDEX_MODES
from vault.tokens import TokenRequest

TTL_SECONDS = 2.0
CAPACITY = 10_000  # entries of each map


class TokenCache:
    def __init__(self, ttl: float = TTL_SECONDS, capacity: int = CAPACITY,
                 clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self._clock = clock
        self._key = os.urandom(32)
        self._items: OrderedDict[bytes, tuple[str, str | None, float]] = OrderedDict()
        self._subjects: OrderedDict[bytes, tuple[str, str, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._served_people: set[str] = set()
        self._served_tokens: set[str] = set()

    def _digest(self, *parts: str) -> bytes:
        return hashlib.blake2b("\x00".join(parts).encode(), key=self._key, digest_size=20).digest()

    def _subject_digest(self, subject: tuple[str, str]) -> bytes | None:
        index, value = subject
        if index not in INDEX_MODES or not isinstance(value, str) or TOKEN_PATTERN.fullmatch(value):
            return None  # a subject given as a token or a uuid: the vault finds its owner each time
        return self._digest("s", index, value)

    def lookup(self, subject: tuple[str, str] | None, items: Sequence[TokenRequest]) -> FlowTokens | None:
        """The flow's tokens when every one of them is here and owned by the flow's person; else None."""
        if not items or not all(r.deterministic for r in items):
            return None
        now = self._clock()
        with self._lock:
            person: str | None = None
            person_key: str | None = None
            if subject is not None:
                digest = self._subject_digest(subject)
                entry = self._subjects.get(digest) if digest is not None else None
                if entry is None or entry[2] <= now:
                    return None
                person, person_key = entry[0], entry[1]
            out: list[str] = []
            for req in items:
                hit = self._items.get(self._digest("t", req.kind, req.format, req.value))
                if hit is None or hit[2] <= now or hit[1] != person:
                    return None  # unknown, stale, or owned by someone else (or by no one: to be adopted)
                out.append(hit[0])
            if person is not None:
                self._served_people.add(person)
            self._served_tokens.update(out)
        return FlowTokens(person, out, person_key)

    def remember(self, subject: tuple[str, str] | None, items: Sequence[TokenRequest], made: FlowTokens) -> None:
        """Store what the vault answered for a flow (after its commit)."""
        if made.expires is None or made.owners is None:
            return
        now = self._clock()
        with self._lock:
            if subject is not None:
                digest = self._subject_digest(subject)
                if digest is None or made.person is None or made.person_key is None:
                    return
                _put(self._subjects, digest, (made.person, made.person_key, now + self.ttl), self.capacity)
            for req, token, expires, owner in zip(items, made.tokens, made.expires, made.owners, strict=True):
                if not req.deterministic or owner != made.person:
                    continue
                until = now + self.ttl if expires is None else min(now + self.ttl, float(expires))
                if until > now:
                    _put(self._items, self._digest("t", req.kind, req.format, req.value), (token, owner, until),
                         self.capacity)

    def take_served(self) -> tuple[set[str], set[str]]:
        """The people and tokens served from here since the last call: the writer checks they still exist."""
        with self._lock:
            people, tokens = self._served_people, self._served_tokens
            self._served_people, self._served_tokens = set(), set()
        return people, tokens

    def drop_missing(self, people: Iterable[str], tokens: Iterable[str]) -> None:
        """Forget every entry of these people (forgotten) and these tokens (deleted or expired)."""
        gone_people, gone_tokens = set(people), set(tokens)
        if not gone_people and not gone_tokens:
            return
        with self._lock:
            for digest in [d for d, e in self._subjects.items() if e[0] in gone_people]:
                del self._subjects[digest]
            for digest in [d for d, e in self._items.items() if e[0] in gone_tokens or e[1] in gone_people]:
                del self._items[digest]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._subjects.clear()


def _put(table: OrderedDict[bytes, tuple[str, str | None, float]] | OrderedDict[bytes, tuple[str, str, float]],
         digest: bytes, entry: tuple[str, str, float] | tuple[str, str | None, float], capacity: int) -> None:
    table[digest] = entry  # type: ignore[assignment]
    table.move_to_end(digest)
    while len(table) > capacity:
        table.popitem(last=False)
