"""Mistakes in the rules or the config stop `tokenbunker proxy` at once, with FILE:LINE: and no stack trace; and
mitmproxy's own options pass through."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.e2e.helpers import cli_command, cli_env, free_port, new_master_key, run_cli
from tests.e2e.proxyhelpers import RecordingUpstream, tcp_ready, tokenbunker_proxy, write_proxy_config

BROKEN_RULES = """version: 1
routes:
  - name: users
    match: {path: "/users"}
    request:
      - {json: "$.email", action: tokenize, kind: email, formt: email}
"""
BROKEN_LINE = 6


def run_proxy_until_exit(config: Path, env: dict[str, str], timeout: float = 15.0) -> tuple[int, str, float]:
    started = time.monotonic()
    port = free_port()
    done = subprocess.run(cli_command("proxy", "--config", str(config), "--mode", "reverse:http://127.0.0.1:9",
                                      "--listen-port", str(port)),
                          env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          check=False, cwd=Path(__file__).resolve().parents[2])
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def test_unknown_rules_key_stops_the_proxy_and_rules_check_agrees(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(BROKEN_RULES, encoding="utf-8")
    config = write_proxy_config(tmp_path / "config.yaml", f"sqlite:///{tmp_path / 'vault.db'}", [rules])
    env = cli_env(TOKENBUNKER_MASTER_KEY=new_master_key())

    code, output, took = run_proxy_until_exit(config, env)
    assert code != 0, output
    assert took < 10, f"took {took:.1f} s to give up"
    assert "Traceback" not in output, output
    where = f"{rules}:{BROKEN_LINE}:"
    [line] = [ln for ln in output.splitlines() if where in ln]
    assert "formt" in line, output

    checked = run_cli("rules", "check", str(rules), env=env)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "Traceback" not in checked.stdout + checked.stderr
    problems = [ln for ln in checked.stdout.splitlines() if ln.strip()]
    assert problems and all(p.startswith(f"{rules}:") for p in problems), problems
    assert any(p.startswith(where) and "formt" in p for p in problems), problems
    # The proxy tells the same problem, word for word.
    assert any(p in line for p in problems), (line, problems)


def test_config_mistake_stops_the_proxy(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nroutes: []\n", encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text(f"vault:\n  database_url: {json.dumps(f'sqlite:///{tmp_path / 'v.db'}')}\n"
                      f"proxy:\n  rules: [{json.dumps(str(rules))}]\n  max_body_byte: 2048\n", encoding="utf-8")
    code, output, took = run_proxy_until_exit(config, cli_env(TOKENBUNKER_MASTER_KEY=new_master_key()))
    assert code != 0 and took < 10, output
    assert "Traceback" not in output, output
    assert f"{config}:5:" in output and "max_body_byte" in output, output


def test_mitmproxy_set_options_pass_through(tmp_path: Path) -> None:
    """cli.md: the sidecar's options pass through to mitmproxy; `--set termlog_verbosity=info` is one of them."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nroutes: []\n", encoding="utf-8")
    config = write_proxy_config(tmp_path / "config.yaml", f"sqlite:///{tmp_path / 'vault.db'}", [rules])
    upstream = RecordingUpstream().start()
    proxy = tokenbunker_proxy(config, cli_env(TOKENBUNKER_MASTER_KEY=new_master_key()), tmp_path, "proxy",
                              f"reverse:{upstream.url}", "--set", "termlog_verbosity=info")
    try:
        proxy.start()
        assert tcp_ready(proxy.port)
    finally:
        proxy.stop()
        upstream.stop()
