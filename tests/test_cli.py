"""The `tokenbunker` command in-process: keys, rotation, migrate, and errors as one line without a traceback."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

import tokenbunker_cli
from vault.core import Vault
from vault.errors import WrongKey
from vault.migrate import head_revision
from vault.tokens import TokenRequest


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = tokenbunker_cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_generate_prints_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "keys", "generate")
    assert code == 0 and re.fullmatch(r"[0-9a-f]{64}\n", out) and "TOKENBUNKER_MASTER_KEY" in err


def test_keys_generate_out_writes_a_private_file_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "master.key"
    assert run(capsys, "keys", "generate", "--out", str(path))[0] == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(path.read_text().strip()) == 64
    code, _, err = run(capsys, "keys", "generate", "--out", str(path))
    assert code == 1 and "already exists" in err


def _config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"vault:\n  database_url: '{database_url}'\n")
    return path


def test_keys_rotate(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> None:
    old, new = os.urandom(32), os.urandom(32)
    vault = Vault.open(database_url, old)
    [token] = vault.tokenize([TokenRequest("v")])
    vault.close()
    config = _config(tmp_path, database_url)
    monkeypatch.setenv("TOKENBUNKER_MASTER_KEY", old.hex())
    code, _, err = run(capsys, "keys", "rotate", "--config", str(config))
    assert code == 1 and "TOKENBUNKER_NEW_MASTER_KEY" in err
    monkeypatch.setenv("TOKENBUNKER_NEW_MASTER_KEY", new.hex())
    code, _, err = run(capsys, "keys", "rotate", "--config", str(config))
    assert code == 0 and "rotated" in err and new.hex() not in err
    with pytest.raises(WrongKey):
        Vault.open(database_url, old)
    rotated = Vault.open(database_url, new)
    assert rotated.detokenize([token]) == ["v"]
    rotated.close()
    # Rotating again with the old key as "current" fails with a clear line.
    code, _, err = run(capsys, "keys", "rotate", "--config", str(config))
    assert code == 1 and "master key does not open this vault" in err and "Traceback" not in err


def test_migrate_reports_the_revision(tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "migrate", "--config", str(_config(tmp_path, database_url)))
    assert code == 0 and f"schema at revision {head_revision()}" in out


@pytest.mark.parametrize(
    ("config_text", "expected"),
    [
        ("vault:\n  database_url: sqlite:///x.db\n  colour: blue\n", r"config\.yaml:3: vault\.colour: unknown key"),
        ("api:\n  listen: nowhere\n", r"config\.yaml:2: api\.listen"),
    ],
)
def test_config_errors_are_one_line_with_file_and_line(tmp_path: Path, config_text: str, expected: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config_text)
    code, _, err = run(capsys, "migrate", "--config", str(path))
    assert code == 1 and re.search(expected, err) and "Traceback" not in err


def test_serve_without_a_master_key_says_which_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("TOKENBUNKER_MASTER_KEY", raising=False)
    code, _, err = run(capsys, "serve", "--config", str(_config(tmp_path, f"sqlite:///{tmp_path}/v.db")))
    assert code == 1 and "no master key: set TOKENBUNKER_MASTER_KEY" in err
