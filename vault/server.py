"""Wiring from config to a running vault: open it, settle the root token, build the WSGI app."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vault.config import Config
from vault.core import Vault
from vault.errors import BadInput
from vault.keys import load_master_key

if TYPE_CHECKING:
    from flask import Flask

    from vault.callbacks import Worker

ROOT_TOKEN_ENV = "TOKENBUNKER_ROOT_TOKEN"
ROOT_TOKEN_META = "root_token_hash"
MIN_ROOT_TOKEN_CHARS = 16


def open_vault(config: Config, env: Mapping[str, str] | None = None) -> Vault:
    env = os.environ if env is None else env
    settings = config.vault
    return Vault.open(
        settings.database_url,
        load_master_key(settings.master_key_file, dict(env)),
        auto_migrate=settings.auto_migrate,
        pool_size=settings.pool_size,
        default_country=settings.default_country,
        data_key_cache=settings.data_key_cache,
    )


@dataclass(frozen=True)
class RootToken:
    hash: bytes
    new_token: str | None  # set only when it was generated now: the one time it can be shown
    source: str


def resolve_root_token(vault: Vault, env: Mapping[str, str] | None = None) -> RootToken:
    """The root token from the environment, else the one generated earlier (only its hash is kept), else a new one."""
    env = os.environ if env is None else env
    given = env.get(ROOT_TOKEN_ENV)
    if given:
        if len(given) < MIN_ROOT_TOKEN_CHARS:
            raise BadInput(f"{ROOT_TOKEN_ENV} must be at least {MIN_ROOT_TOKEN_CHARS} characters")
        return RootToken(vault.keyring.api_token_hash(given), None, ROOT_TOKEN_ENV)
    stored = vault.get_meta(ROOT_TOKEN_META)
    if stored is None:
        token = secrets.token_urlsafe(32)
        if vault.set_meta_once(ROOT_TOKEN_META, vault.keyring.api_token_hash(token).hex()):
            return RootToken(vault.keyring.api_token_hash(token), token, "generated")
        stored = vault.get_meta(ROOT_TOKEN_META)  # another replica generated one first: theirs stands
    assert stored is not None
    return RootToken(bytes.fromhex(stored), None, "stored")


def rotate_root_token(vault: Vault) -> str:
    token = secrets.token_urlsafe(32)
    vault.replace_meta(ROOT_TOKEN_META, vault.keyring.api_token_hash(token).hex())
    return token


def build_app(config: Config, vault: Vault, root: RootToken) -> Flask:
    from vault.api import create_app  # Flask only where the API is served (not for `scrub` or the proxy)

    return create_app(
        vault,
        root_token_hash=root.hash,
        max_body_bytes=config.api.max_body_bytes,
        max_batch=config.api.max_batch,
        scrubber=log_scrubber(config, vault),
        config=config,
    )


def log_scrubber(config: Config, vault: Vault) -> object | None:
    """The scrubber behind POST /v1/scrub: the `logs:` rules of scrub.rules (or proxy.rules). Files that are not
    there mean no scrubbing here; files with mistakes stop the start, as any config mistake does."""
    from rules.compiler import load_rules
    from rules.scrub import LogScrubber

    files = [f for f in config.log_rule_files if os.path.exists(f)]
    rules = load_rules(files).logs if files else ()
    return LogScrubber(rules, vault.tokenize_with_expiry) if rules else None


def start_callbacks(config: Config, vault: Vault, env: Mapping[str, str] | None = None) -> Worker | None:
    """The callback delivery thread, when callbacks are configured (events wait in the outbox until they are)."""
    from vault.callbacks import Delivery, Worker

    delivery = Delivery.from_config(config.callbacks, os.environ if env is None else env)
    return None if delivery is None else Worker(vault, delivery).start()
