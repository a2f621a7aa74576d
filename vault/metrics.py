"""Prometheus metrics (text exposition format 0.0.4): what the vault holds, and what this process's API served.

Labels carry only names the vault chose or validated (token kinds, outbox states, URL rules such as
/v1/user/<mode>/<path:ident>, never a URL with its values): no PII. Database figures are the whole vault's, the same
from every replica; request counts are this process's, since it started.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from sqlalchemy import Connection, Table, func, select

from vault.models import Base, audit_table, forgotten_table, outbox_table, people_table, tokens_table

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    kind: str  # gauge or counter
    help: str
    value: float
    labels: Labels = ()


def _count(conn: Connection, table: Table, *where: object) -> int:
    return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())  # type: ignore[arg-type]


def _requests_table() -> Table | None:
    """The DPO request queue's table, if this build has one with a status column (found, not named by hand)."""
    for name, table in Base.metadata.tables.items():
        if "request" in name and "status" in table.c:
            return table
    return None


def gather(conn: Connection) -> list[Sample]:
    out = [
        Sample("tokenbunker_people", "gauge", "People in the vault.", _count(conn, people_table)),
        Sample("tokenbunker_forgotten_people", "gauge", "People forgotten (tb_forgotten).",
               _count(conn, forgotten_table)),
        Sample("tokenbunker_audit_rows", "gauge", "Rows in the audit trail.", _count(conn, audit_table)),
    ]
    by_kind = conn.execute(select(tokens_table.c.kind, func.count()).group_by(tokens_table.c.kind)
                           .order_by(tokens_table.c.kind))
    out += [Sample("tokenbunker_tokens", "gauge", "Tokens by kind.", n, (("kind", kind),)) for kind, n in by_kind]
    o = outbox_table.c
    states = {
        "pending": (o.delivered_at.is_(None), o.failed_at.is_(None)),
        "delivered": (o.delivered_at.is_not(None),),
        "failed": (o.failed_at.is_not(None),),
    }
    out += [Sample("tokenbunker_outbox_events", "gauge", "Callback events by state.", _count(conn, outbox_table, *w),
                   (("state", state),)) for state, w in states.items()]
    out.append(Sample("tokenbunker_outbox_retrying", "gauge", "Pending callback events that failed at least once.",
                      _count(conn, outbox_table, *states["pending"], o.attempts > 0)))
    requests = _requests_table()
    if requests is not None:
        out.append(Sample("tokenbunker_open_requests", "gauge", "DPO requests waiting for a decision.",
                          _count(conn, requests, requests.c.status == "open")))
    return out


@dataclass
class RequestCounter:
    """API requests by URL rule, method and status, for this process."""

    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, rule: str, method: str, status: int) -> None:
        key = (rule, method, str(status))
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def samples(self) -> list[Sample]:
        with self.lock:
            items = sorted(self.counts.items())
        return [Sample("tokenbunker_api_requests_total", "counter", "API requests served by this process.", n,
                       (("rule", rule), ("method", method), ("status", status))) for (rule, method, status), n in items]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(samples: list[Sample]) -> str:
    lines: list[str] = []
    described: set[str] = set()
    for s in samples:
        if s.name not in described:
            described.add(s.name)
            lines += [f"# HELP {s.name} {s.help}", f"# TYPE {s.name} {s.kind}"]
        labels = ",".join(f'{k}="{_escape(v)}"' for k, v in s.labels)
        value = int(s.value) if float(s.value).is_integer() else s.value
        lines.append(f"{s.name}{{{labels}}} {value}" if labels else f"{s.name} {value}")
    return "\n".join(lines) + "\n"
