"""The `tokenbunker` command: one small module that wires the parts (contract: shared/contracts/cli.md)."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

DEV_KEY_FILE = "data/master.key"
DEV_OUTBOX = "data/outbox.jsonl"
NEW_KEY_ENV = "TOKENBUNKER_NEW_MASTER_KEY"


class UserError(Exception):
    """A problem the user can fix; printed as one line, no stack trace."""


def _config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from vault.config import load_config

    return load_config(args.config)


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Alembic narrates every step at INFO; our own migrate logger says what matters.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # psycopg warns on every pipeline aborted by a unique-key race that the vault retries anyway.
    logging.getLogger("psycopg").setLevel(logging.ERROR)


def _stop_on_sigterm() -> None:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from vault.keys import generate_master_key, write_key_file

    key = generate_master_key()
    if args.out:
        try:
            write_key_file(args.out, key)
        except FileExistsError:
            raise UserError(f"{args.out}: already exists; not overwriting a key file") from None
        print(f"wrote a new master key to {args.out} (mode 0600). Keep a copy apart from the database backups.",
              file=sys.stderr)
    else:
        print(key)
        print("a new master key (64 hex characters): give it as TOKENBUNKER_MASTER_KEY; it is shown only now",
              file=sys.stderr)
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from vault.core import rotate_master_key
    from vault.keys import load_master_key, parse_master_key

    config = _config(args)
    old = load_master_key(config.vault.master_key_file)
    if args.new_key_file:
        new = load_master_key(args.new_key_file, {})
    elif os.environ.get(NEW_KEY_ENV):
        new = parse_master_key(os.environ[NEW_KEY_ENV], NEW_KEY_ENV)
    else:
        raise UserError(f"give the new master key as {NEW_KEY_ENV} or --new-key-file")
    if new == old:
        raise UserError("the new master key is the same as the current one")
    rotate_master_key(config.vault.database_url, old, new)
    print("master key rotated: the vault secret is now sealed by the new key. Start servers with the new key; "
          "running ones keep working.", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace, config) -> int:  # type: ignore[no-untyped-def]
    from waitress import serve

    from vault.config import parse_listen
    from vault.scheduler import RetentionScheduler
    from vault.server import build_app, open_vault, resolve_root_token, start_callbacks

    listen = args.listen or config.api.listen
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise UserError(f"--listen: {exc}") from None
    vault = open_vault(config)
    try:
        root = resolve_root_token(vault)
        app = build_app(config, vault, root)
        worker = start_callbacks(config, vault)  # before the banner: a missing secret stops the start
        shown_host = f"[{host}]" if ":" in host else host
        print(f"tokenbunker: vault API on http://{shown_host}:{port}/v1/ (health: /health, ready: /ready)",
              flush=True)
        if root.new_token:
            print(f"tokenbunker: root token (shown once; send it as X-Bunker-Token): {root.new_token}", flush=True)
        elif root.source == "stored":
            print("tokenbunker: root token: the one generated earlier (only its hash is kept); "
                  "`tokenbunker root-token rotate` makes a new one, or set TOKENBUNKER_ROOT_TOKEN", flush=True)
        _stop_on_sigterm()
        scheduler = RetentionScheduler(vault, config.retention).start()
        try:
            serve(app, listen=f"{shown_host}:{port}", threads=config.api.threads, ident="tokenbunker",
                  # Flask answers bodies over the limit with the API's JSON 413; waitress only stops absurd ones.
                  max_request_body_size=max(2 * config.api.max_body_bytes, config.api.max_body_bytes + (1 << 20)))
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            raise UserError(f"cannot listen on {listen}: {exc.strerror}") from None
        finally:
            scheduler.stop()
            if worker is not None:
                worker.stop()
    finally:
        vault.close()
    print("tokenbunker: stopped", flush=True)
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from vault.server import open_vault

    vault = open_vault(_config(args))
    try:
        verdict = vault.verify_audit()
    finally:
        vault.close()
    print(verdict.summary())
    return 0 if verdict.intact else 1


def cmd_backup(args: argparse.Namespace) -> int:
    from vault.server import open_vault

    vault = open_vault(_config(args))
    try:
        if not args.out or args.out == "-":
            for line in vault.backup_lines(by="cli"):
                sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
            return 0
        out = Path(args.out)
        partial = out.with_name(out.name + ".partial")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise UserError(f"{partial}: {exc.strerror}") from None
        rows = 0
        with os.fdopen(fd, "wb") as handle:
            for line in vault.backup_lines(by="cli"):
                handle.write(line)
                rows += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, out)  # a backup that stopped half-way never takes the name
    finally:
        vault.close()
    print(f"wrote {out} ({rows} lines); restore it with `tokenbunker restore {out}` (the master key opens it)",
          file=sys.stderr)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from vault.backup import journal_database, journal_file, restore
    from vault.db import make_engine
    from vault.keys import load_master_key

    config = _config(args)
    path = Path(args.file)
    if not path.is_file():
        raise UserError(f"{path}: no such backup file")
    journal: set[str] = set()
    for name in args.forgotten or ():
        try:
            journal |= journal_file(Path(name))
        except OSError as exc:
            raise UserError(f"{name}: {exc.strerror}") from None
    for url in args.forgotten_from or ():
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                journal |= journal_database(conn)
        except Exception as exc:
            raise UserError(f"--forgotten-from: cannot read tb_forgotten there ({type(exc).__name__})") from None
        finally:
            engine.dispose()
    done = restore(config.vault.database_url, path, load_master_key(config.vault.master_key_file), journal,
                   by="cli")
    print(f"restored {done.rows} rows (schema {done.schema}, backup of {done.created}); forget-me journal: "
          f"{done.journal} people, {done.forgotten_again} forgotten again; audit: {done.chain}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    return _serve(args, _config(args))


def cmd_up(args: argparse.Namespace) -> int:
    from vault.keys import MASTER_KEY_ENV, generate_master_key, write_key_file

    config = _config(args)
    if not os.environ.get(MASTER_KEY_ENV) and not config.vault.master_key_file:
        # The development job needs a key and the user asked for one by running it: keep it beside the data,
        # readable by its owner only, and say so loudly.
        key_file = Path(DEV_KEY_FILE)
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            write_key_file(key_file, generate_master_key())
            print(f"tokenbunker: development master key written to {key_file} (mode 0600); "
                  f"for production give {MASTER_KEY_ENV} instead", flush=True)
        os.environ["TOKENBUNKER_VAULT_MASTER_KEY_FILE"] = str(key_file)
        config = _config(args)
    if not (config.notify.outbox or config.notify.smtp_host or config.notify.sms_url):
        # Development: the portal's login codes go to a local file (the contract's notify.outbox), not to people.
        os.environ["TOKENBUNKER_NOTIFY_OUTBOX"] = DEV_OUTBOX
        config = _config(args)
    from vault.up import run_all

    return run_all(config, args.config)


def cmd_migrate(args: argparse.Namespace) -> int:
    from vault.db import make_engine, safe_url
    from vault.migrate import current_revision, migrate

    config = _config(args)
    engine = make_engine(config.vault.database_url)
    try:
        migrate(engine)
        print(f"{safe_url(engine)}: schema at revision {current_revision(engine)}")
    finally:
        engine.dispose()
    return 0


def cmd_root_token_rotate(args: argparse.Namespace) -> int:
    from vault.server import open_vault, rotate_root_token

    vault = open_vault(_config(args))
    try:
        token = rotate_root_token(vault)
    finally:
        vault.close()
    print(token)
    print("a new root token (shown once); the old one stops working when the servers restart", file=sys.stderr)
    return 0


def cmd_proxy(args: argparse.Namespace) -> int:
    from proxy_addons.runner import parse, run

    config_path, rest = parse(args.rest)
    if config_path is None:
        config_path = args.config
    _config(argparse.Namespace(config=config_path))  # config mistakes are told here, as one line each
    return run(rest, config_path)


def cmd_rules_check(args: argparse.Namespace) -> int:
    from rules.compiler import RulesError, load_rules

    problems: list[str] = []
    routes = logs = 0
    for path in args.paths:
        try:
            ruleset = load_rules([path])
        except RulesError as exc:
            problems += exc.problems
            continue
        routes += len(ruleset.routes)
        logs += len(ruleset.logs)
    if len(args.paths) > 1 and not problems:
        try:
            load_rules(args.paths)  # route names must also be unique across the files
        except RulesError as exc:
            problems += exc.problems
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"{len(args.paths)} file(s) OK: {routes} route(s), {logs} log rule(s)", file=sys.stderr)
    return 0


class _Stop(Exception):
    pass


def cmd_scrub(args: argparse.Namespace) -> int:
    # Start-up makes a few hundred thousand objects that live as long as the process (SQLAlchemy, the vault's
    # modules, the rules): the cyclic collector would walk them all several times while they are made, and again in
    # every full collection while lines are scrubbed. Off until the vault is open, then out of its sight.
    gc.disable()
    try:
        from rules.compiler import load_rules
        from rules.logstream import Stream, follow, scrub_fd
        from rules.scrub import LogScrubber

        config = _config(args)
        files = list(config.log_rule_files)
        rules = load_rules(files).logs
        if not rules:
            raise UserError(f"no `logs:` rules in {', '.join(files)}: nothing to scrub with")
        if args.follow and len(args.files) != 1:
            raise UserError("--follow takes exactly one file")
        tokenize, close = _log_tokenizer(config)
        stream = Stream(LogScrubber(rules, tokenize, cache_size=args.cache), sys.stdout.buffer)
    finally:
        gc.freeze()
        gc.enable()
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if not args.follow:
            raise _Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if args.follow:
            follow(args.files[0], stream, lambda: stopping, from_start=args.from_start)
        elif not args.files or args.files == ["-"]:
            scrub_fd(sys.stdin.fileno(), stream)
        else:
            for name in args.files:
                try:
                    fd = os.open(name, os.O_RDONLY)
                except OSError as exc:
                    raise UserError(f"{name}: {exc.strerror}") from None
                try:
                    scrub_fd(fd, stream)
                finally:
                    os.close(fd)
    except _Stop:
        stream.finish()
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        close()
    return 0


def _log_tokenizer(config):  # type: ignore[no-untyped-def]
    """The vault as the scrubber needs it: a blocking batch tokenize, in-process or over HTTP."""
    if config.proxy.vault_url:
        from proxy_addons.vaultclient import HttpVault

        if not config.proxy.vault_token:
            raise UserError("proxy.vault_url is set but no token: set TOKENBUNKER_PROXY_VAULT_TOKEN")
        remote = HttpVault(config.proxy.vault_url, config.proxy.vault_token, threads=1)
        return remote.tokenize_sync, remote.close
    from vault.keys import load_master_key
    from vault.logwriter import EmbeddedTokenizer

    # An embedded vault (or a new one, when the vault may set up its schema): the scrubber's own lean writer, with no
    # SQLAlchemy to load. Else (a schema to migrate, PostgreSQL) the full vault.
    writer = EmbeddedTokenizer.open(config.vault.database_url,
                                    load_master_key(config.vault.master_key_file, dict(os.environ)),
                                    create=config.vault.auto_migrate)
    if writer is not None:
        return writer.tokenize_with_expiry, writer.close
    from vault.server import open_vault

    vault = open_vault(config)
    return vault.tokenize_with_expiry, vault.close


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenbunker", description="Privacy sidecar and PII vault.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", default=None, help="config file (default: $TOKENBUNKER_CONFIG or config.yaml)")
        return p

    up = with_config(sub.add_parser("up", help="run the vault API (and, later, portal and sidecar) on SQLite"))
    up.set_defaults(func=cmd_up)

    serve = with_config(sub.add_parser("serve", help="run the vault REST API under waitress"))
    serve.add_argument("--listen", default=None, help="HOST:PORT (default: api.listen, 127.0.0.1:3000)")
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="master key management")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    gen = keys_sub.add_parser("generate", help="print a new 256-bit master key (or write it with --out)")
    gen.add_argument("--out", help="write the key to this new file, mode 0600")
    gen.set_defaults(func=cmd_keys_generate)
    rot_key = with_config(keys_sub.add_parser(
        "rotate", help="re-seal the vault under a new master key (old key as usual, new one in "
        f"{NEW_KEY_ENV} or --new-key-file)"))
    rot_key.add_argument("--new-key-file", help="a file holding the new key (64 hex characters, mode 0600)")
    rot_key.set_defaults(func=cmd_keys_rotate)

    sub.add_parser("proxy", add_help=False,
                   help="run the sidecar (mitmproxy, lean): proxy [--config F] [mitmproxy options]")

    scrub = with_config(sub.add_parser("scrub", help="scrub log lines from files or stdin to stdout"))
    scrub.add_argument("files", nargs="*", metavar="FILE", help="files to read (default: stdin)")
    scrub.add_argument("--follow", "-F", action="store_true", help="follow one growing file, across rotations")
    scrub.add_argument("--from-start", action="store_true", help="with --follow: begin at the start of the file")
    scrub.add_argument("--cache", type=int, default=100_000, help="values kept in the token cache (default 100000)")
    scrub.set_defaults(func=cmd_scrub)

    rules = sub.add_parser("rules", help="rule files")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    check = rules_sub.add_parser("check", help="validate rule files: FILE:LINE: message per problem, exit 1")
    check.add_argument("paths", nargs="+", metavar="PATH")
    check.set_defaults(func=cmd_rules_check)

    mig = with_config(sub.add_parser("migrate", help="bring the database schema up to date"))
    mig.set_defaults(func=cmd_migrate)

    root = sub.add_parser("root-token", help="the root API token")
    root_sub = root.add_subparsers(dest="root_command", required=True, metavar="ACTION")
    rot = with_config(root_sub.add_parser("rotate", help="make a new root token and print it once"))
    rot.set_defaults(func=cmd_root_token_rotate)

    aud = sub.add_parser("audit", help="the audit trail")
    aud_sub = aud.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    ver = with_config(aud_sub.add_parser("verify", help="check the audit chain; exit 1 naming the first broken link"))
    ver.set_defaults(func=cmd_audit_verify)

    bak = with_config(sub.add_parser("backup", help="write a consistent, still-encrypted backup (JSON lines)"))
    bak.add_argument("--out", help="write to this file (mode 0600) instead of stdout")
    bak.set_defaults(func=cmd_backup)

    res = with_config(sub.add_parser("restore", help="restore a backup into an empty database (either backend)"))
    res.add_argument("file", metavar="FILE", help="a file written by `tokenbunker backup` or GET /v1/sys/backup")
    res.add_argument("--forgotten", action="append", metavar="JOURNAL",
                     help="a forget-me journal: person uuids, or forgetme callback bodies, one a line (repeatable)")
    res.add_argument("--forgotten-from", action="append", metavar="DATABASE_URL",
                     help="forget again everyone in tb_forgotten of this database (repeatable)")
    res.set_defaults(func=cmd_restore)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from rules.compiler import RulesError
    from vault.config import ConfigError
    from vault.errors import VaultError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["proxy"]:
        # Everything after `proxy` belongs to mitmproxy (but --config); argparse's REMAINDER would choke on it.
        args = argparse.Namespace(func=cmd_proxy, rest=argv[1:], config=None)
    else:
        args = build_parser().parse_args(argv)
        _setup_logging()  # the proxy logs through mitmproxy's own terminal log instead
    try:
        return int(args.func(args))
    except (UserError, ConfigError, RulesError) as exc:
        print(f"tokenbunker: error: {exc}", file=sys.stderr)
    except VaultError as exc:
        print(f"tokenbunker: error: {exc.message}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug of ours: say so in one line; the text could hold a value, so only the type
        if os.environ.get("TOKENBUNKER_DEBUG"):
            raise
        print(f"tokenbunker: internal error ({type(exc).__name__}); set TOKENBUNKER_DEBUG=1 to see where",
              file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
