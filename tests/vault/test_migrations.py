"""The migrations build exactly the schema the models describe, on both backends, and are safe to rerun."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from vault.db import make_engine
from vault.migrate import current_revision, head_revision, migrate
from vault.models import Base


def test_migrations_match_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate(engine)
        migrate(engine)  # a second start finds nothing to do
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()


def test_the_vaults_schema_head_is_alembics() -> None:
    from vault.core import SCHEMA_HEAD

    assert head_revision() == SCHEMA_HEAD
