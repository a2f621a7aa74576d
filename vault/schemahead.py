"""Facts about the stored schema that code without SQLAlchemy needs too (the log scrubber's embedded writer)."""

SCHEMA_HEAD = "0009"  # the newest migration; tests/vault/test_migrations.py keeps this in step
VAULT_SECRET_META = "vault_secret"  # the tb_meta row holding the vault secret, sealed with the master key
