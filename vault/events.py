"""Callbacks to the backend, through a durable outbox: an event is written in the same transaction as the change
it reports (so it is sent if and only if the change committed), and a worker delivers it later with retries.

Bodies carry the person's token (uuid) and the names of what changed, never profile values: a backend that needs
the data asks the API for it, with its own token.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import Connection, insert

from vault.models import outbox_table as outbox

EVENTS = ("profilenew", "profilechange", "forgetme", "consentchange", "requestcreated")


def enqueue(conn: Connection, event: str, payload: dict[str, Any], now: int) -> str:
    """Queue `event` for delivery; its event id, unique, so receivers can drop repeats."""
    if event not in EVENTS:
        raise ValueError(f"unknown callback event {event!r}")
    event_id = str(uuid.uuid4())
    body = json.dumps({"event_id": event_id, "event": event, "time": now, **payload}, separators=(",", ":"))
    conn.execute(insert(outbox).values(event_id=event_id, event=event, body=body, created_at=now,
                                       next_attempt_at=now, attempts=0))
    return event_id
