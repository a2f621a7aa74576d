"""Backup and restore: a consistent, still-encrypted dump of every table, and its restore into an empty database.

The dump is JSON lines, read from one snapshot (PostgreSQL: a REPEATABLE READ, READ ONLY transaction; SQLite: one
read transaction), table by table in dependency order, over every table the models declare:

    {"format": "tokenbunker-backup", "version": 1, "schema": "0008", "created": 1800000000, "tables": [...]}
    {"table": "tb_meta", "columns": ["name", "value"], "binary": []}
    ["vault_secret", "9f0c..."]                       one JSON array per row; binary columns in base64
    ...
    {"end": true, "rows": {"tb_meta": 2, ...}}        a dump without it was cut short, and is refused

Values stay as stored: sealed profiles and tokens, wrapped data keys, the vault secret sealed by the master key
(which is not in the dump: restoring needs it, and it is checked before anything is written).

Forget-me and old backups: a dump taken before someone was forgotten still holds their wrapped key. The restore
re-applies a forget-me journal the operator passes: the `forgetme` callbacks their backend received (one JSON body
or person uuid a line), and/or the tb_forgotten table of another database that survived (a replica, the database
being migrated). Every uuid in it is forgotten again after loading, and kept in tb_forgotten for the next backup.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, LargeBinary, MetaData, Table, func, insert, inspect, select, text

from vault.errors import BadInput, Conflict
from vault.keys import open_vault_secret
from vault.models import Base
from vault.models import forgotten_table as forgotten
from vault.schemahead import VAULT_SECRET_META

FORMAT = "tokenbunker-backup"
VERSION = 1
_BATCH = 500


def _line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def dump(conn: Connection, schema: str | None, now: int) -> Iterator[bytes]:
    """The dump's lines, read through `conn` (which the caller holds in one snapshot)."""
    tables = list(Base.metadata.sorted_tables)
    yield _line({"format": FORMAT, "version": VERSION, "schema": schema, "created": now,
                 "backend": conn.dialect.name, "tables": [t.name for t in tables]})
    counts: dict[str, int] = {}
    streaming = conn.execution_options(stream_results=True, yield_per=_BATCH)
    for table in tables:
        columns = list(table.columns)
        binary = [c.name for c in columns if isinstance(c.type, LargeBinary)]
        yield _line({"table": table.name, "columns": [c.name for c in columns], "binary": binary})
        counts[table.name] = 0
        order = list(table.primary_key.columns) or columns
        for row in streaming.execute(select(*columns).order_by(*order)):
            yield _line([_encode(v) for v in row])
            counts[table.name] += 1
    yield _line({"end": True, "rows": counts})


def _encode(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


# -- reading a dump ---------------------------------------------------------------------------------------------


@dataclass
class Section:
    table: str
    columns: list[str]
    binary: set[str]
    rows: int = 0


@dataclass
class Header:
    schema: str | None
    created: int
    tables: list[str]
    sections: dict[str, Section] = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        return sum(s.rows for s in self.sections.values())


def _lines(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                yield number, json.loads(raw)
            except ValueError:
                raise BadInput(f"{path}:{number}: not a JSON line (is this a tokenbunker backup?)") from None


def _walk(path: Path) -> Iterator[tuple[Header, Section | None, list[Any] | None]]:
    """Each row with its section, after checking the dump's shape as it goes."""
    header: Header | None = None
    section: Section | None = None
    ended = False
    for number, item in _lines(path):
        where = f"{path}:{number}"
        if header is None:
            if not isinstance(item, dict) or item.get("format") != FORMAT:
                raise BadInput(f"{where}: not a tokenbunker backup (no header)")
            if item.get("version") != VERSION:
                raise BadInput(f"{where}: backup format version {item.get('version')!r}; this tokenbunker reads "
                               f"version {VERSION}")
            header = Header(item.get("schema"), int(item.get("created", 0)), list(item.get("tables", [])))
            yield header, None, None
        elif ended:
            raise BadInput(f"{where}: data after the end of the backup")
        elif isinstance(item, list):
            if section is None or len(item) != len(section.columns):
                raise BadInput(f"{where}: a row that matches no table section")
            section.rows += 1
            yield header, section, item
        elif isinstance(item, dict) and "table" in item:
            if item["table"] not in header.tables or item["table"] in header.sections:
                raise BadInput(f"{where}: unexpected table section {str(item['table'])[:64]!r}")
            section = Section(item["table"], list(item["columns"]), set(item.get("binary", [])))
            header.sections[section.table] = section
        elif isinstance(item, dict) and item.get("end") is True:
            counts = {name: s.rows for name, s in header.sections.items()}
            if counts != item.get("rows"):
                raise BadInput(f"{where}: the row counts do not match the end marker (a damaged backup)")
            ended = True
        else:
            raise BadInput(f"{where}: not a line of a tokenbunker backup")
    if header is None:
        raise BadInput(f"{path}: empty file, not a backup")
    if not ended:
        raise BadInput(f"{path}: the backup is cut short (no end marker): it was interrupted while being written")


def check(path: Path, master_key: bytes) -> Header:
    """A full read of the dump before anything is written: well formed, complete, and opened by this master key."""
    header: Header | None = None
    secret_ok = False
    for step in _walk(path):
        header, section, row = step
        if section is not None and row is not None and section.table == "tb_meta":
            record = dict(zip(section.columns, row, strict=True))
            if record.get("name") == VAULT_SECRET_META:
                open_vault_secret(master_key, bytes.fromhex(record["value"]))  # raises WrongKey
                secret_ok = True
    assert header is not None
    if not secret_ok and header.total_rows:
        raise BadInput(f"{path}: the backup holds no sealed vault secret (tb_meta): it cannot be opened")
    return header


# -- restoring --------------------------------------------------------------------------------------------------


def rows_in(engine: Engine) -> dict[str, int]:
    """The vault tables of a database that hold rows: a restore target must have none."""
    with engine.connect() as conn:
        present = set(inspect(conn).get_table_names())
        counts = {}
        for table in Base.metadata.sorted_tables:
            if table.name in present:
                count = conn.execute(select(func.count()).select_from(table)).scalar_one()
                if count:
                    counts[table.name] = count
        return counts


def refuse_unless_empty(engine: Engine) -> None:
    found = rows_in(engine)
    if found:
        listed = ", ".join(f"{name} ({count} rows)" for name, count in sorted(found.items()))
        raise Conflict(f"the target database is not empty: {listed}. Restore into a new, empty database")


def load(conn: Connection, path: Path) -> Header:
    """Insert every row of the dump into tables at the dump's schema revision (reflected, so an older dump's
    columns are found as they were), then move PostgreSQL's sequences past the restored ids."""
    tables: dict[str, Table] = {}
    meta = MetaData()
    pending: list[dict[str, Any]] = []
    current: Section | None = None
    header: Header | None = None

    def flush() -> None:
        if pending and current is not None:
            conn.execute(insert(tables[current.table]), pending)
            pending.clear()

    for step in _walk(path):
        header, section, row = step
        if section is None or row is None:
            continue
        if section is not current:
            flush()
            current = section
            if section.table not in tables:
                tables[section.table] = Table(section.table, meta, autoload_with=conn)
        pending.append({col: (base64.b64decode(v) if col in section.binary and v is not None else v)
                        for col, v in zip(section.columns, row, strict=True)})
        if len(pending) >= _BATCH:
            flush()
    flush()
    assert header is not None
    if conn.dialect.name == "postgresql":
        _advance_sequences(conn, tables.values())
    return header


def _advance_sequences(conn: Connection, tables: Iterable[Table]) -> None:
    for table in tables:
        for column in table.primary_key.columns:
            seq = conn.execute(text("SELECT pg_get_serial_sequence(:t, :c)"),
                               {"t": table.name, "c": column.name}).scalar()
            if seq is not None:
                top = conn.execute(select(func.max(column))).scalar()
                conn.execute(text("SELECT setval(CAST(:s AS regclass), :v, :called)"),
                             {"s": seq, "v": top or 1, "called": top is not None})


# -- the forget-me journal ------------------------------------------------------------------------------------


def journal_file(path: Path) -> set[str]:
    """Person uuids from a file: one a line, either the uuid or a `forgetme` callback body as received."""
    found: set[str] = set()
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        candidate: Any = line
        if line.startswith("{"):
            try:
                body = json.loads(line)
            except ValueError:
                raise BadInput(f"{path}:{number}: not JSON, nor a person uuid") from None
            if not isinstance(body, dict) or body.get("event", "forgetme") != "forgetme":
                raise BadInput(f"{path}:{number}: not a forgetme event")
            candidate = body.get("token")
        try:
            found.add(str(uuid.UUID(str(candidate))))
        except ValueError:
            raise BadInput(f"{path}:{number}: not a person uuid (nor a forgetme event with a token)") from None
    return found


def journal_database(conn: Connection) -> set[str]:
    """The uuids a (surviving) database has forgotten."""
    return {str(pid) for pid in conn.execute(select(forgotten.c.person_id)).scalars()}


# -- the whole restore, as `tokenbunker restore` runs it ------------------------------------------------------


@dataclass(frozen=True)
class Restored:
    rows: int
    schema: str | None
    created: int
    journal: int  # uuids in the forget-me journal given
    forgotten_again: int  # people the backup brought back, forgotten again
    chain: str  # the audit chain's verdict after the restore


def restore(database_url: str, path: Path, master_key: bytes, journal: set[str], *, by: str) -> Restored:
    """Check the dump, refuse a target that holds data, migrate it to the dump's schema, load every row in one
    transaction, bring the schema up to date, re-apply the forget-me journal, and verify the audit chain."""
    from vault.core import Vault
    from vault.db import WRITE_OPTION, make_engine
    from vault.db import db_errors as _db_errors
    from vault.migrate import current_revision, is_ancestor, known_revision, migrate

    header = check(path, master_key)
    if header.schema is None or not known_revision(header.schema):
        raise BadInput(f"{path}: the backup's schema revision {header.schema!r} is unknown to this tokenbunker "
                       "(taken by a newer version?)")
    engine = make_engine(database_url)
    try:
        with _db_errors():
            refuse_unless_empty(engine)
            current = current_revision(engine)
            if current is not None and not is_ancestor(current, header.schema):
                raise Conflict(f"the target database's schema is at revision {current}, past the backup's "
                               f"({header.schema}): restore into a new database, before any migration")
            migrate(engine, header.schema)
            with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
                load(conn, path)
    finally:
        engine.dispose()
    vault = Vault.open(database_url, master_key)  # brings the schema to head; checks the key against the vault
    try:
        again = vault.reapply_forgotten(journal, by=by)
        vault.record_restore({"rows": header.total_rows, "created": header.created, "schema": header.schema,
                              "journal": len(journal), "forgotten_again": again}, by=by)
        verdict = vault.verify_audit()
    finally:
        vault.close()
    return Restored(header.total_rows, header.schema, header.created, len(journal), again, verdict.summary())
