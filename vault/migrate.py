"""Schema migrations (Alembic), run at start by whichever process gets there first."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

log = logging.getLogger("tokenbunker.migrate")
_SCRIPTS = Path(__file__).parent / "migrations"
_PG_LOCK_ID = 0x7B0B  # an arbitrary advisory lock number shared by every replica


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def migrate(engine: Engine, revision: str | None = None) -> None:
    """Up to the newest revision, or to `revision` (a restore loads a backup at the schema it was taken with)."""
    cfg = _config()
    head = revision or head_revision()
    with engine.connect() as conn:
        if MigrationContext.configure(conn).get_current_revision() == head:
            return
    # On SQLite the write option makes this BEGIN IMMEDIATE, which serialises processes starting together.
    with engine.execution_options(tokenbunker_write=True).begin() as conn:
        if conn.dialect.name == "postgresql":
            # Replicas starting together: one migrates, the others wait here and then find nothing to do.
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision or "head")
    log.info("database schema brought up to revision %s", head)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_ancestor(older: str, newer: str) -> bool:
    """Whether revision `older` comes before (or is) `newer`."""
    script = ScriptDirectory.from_config(_config())
    return any(rev.revision == older for rev in script.walk_revisions(base="base", head=newer))


def known_revision(revision: str) -> bool:
    try:
        return ScriptDirectory.from_config(_config()).get_revision(revision) is not None
    except Exception:  # alembic raises its own errors for unknown or malformed ids
        return False
