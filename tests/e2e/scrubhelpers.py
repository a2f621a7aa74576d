"""Helpers for the end-to-end tests of `tokenbunker scrub`: configs, the command, and its processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from tests.e2e.helpers import REPO, cli_env, new_master_key

TOKEN = re.compile(rb"tbk_[a-z2-7]{26}")
IP_RULES = "  - {detect: [ipv4, ipv6], action: tokenize, kind: ip, deterministic: true, ttl: %s}\n"


def scrub_executable() -> list[str]:
    """The installed `tokenbunker` console script beside the interpreter (as users run it), else the module."""
    script = Path(sys.executable).parent / "tokenbunker"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "tokenbunker_cli"]


class Setup:
    """A config whose `scrub.rules` holds one rules file, a master key, and the environment to run with it."""

    def __init__(self, tmp_path: Path, database_url: str, logs: str, *, routes_only: bool = False) -> None:
        self.dir = tmp_path
        self.database_url = database_url
        self.key = new_master_key()
        self.rules = tmp_path / "scrub-rules.yaml"
        if routes_only:
            self.rules.write_text("version: 1\nroutes:\n  - name: r\n    request:\n"
                                  "      - {json: \"$.email\", action: tokenize}\n", encoding="utf-8")
        else:
            self.rules.write_text("version: 1\nlogs:\n" + logs, encoding="utf-8")
        self.config = tmp_path / "scrub-config.yaml"
        self.config.write_text(
            "vault:\n"
            f"  database_url: {json.dumps(database_url)}\n"
            "scrub:\n"
            f"  rules: [{json.dumps(str(self.rules))}]\n",
            encoding="utf-8",
        )
        self.env = cli_env(TOKENBUNKER_MASTER_KEY=self.key)

    def command(self, *args: str) -> list[str]:
        return [*scrub_executable(), "scrub", "--config", str(self.config), *args]

    def run(self, *args: str, data: bytes = b"", timeout: float = 60.0) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.command(*args), cwd=REPO, env=self.env, input=data, capture_output=True,
                              timeout=timeout, check=False)

    def start(self, *args: str, stdin: int | IO[bytes] | None = subprocess.PIPE,
              stdout: int | IO[bytes] | None = subprocess.PIPE, stderr_name: str = "scrub.stderr") -> Scrub:
        stderr = (self.dir / stderr_name).open("wb")
        proc = subprocess.Popen(self.command(*args), cwd=REPO, env=self.env, stdin=stdin, stdout=stdout,
                                stderr=stderr)
        return Scrub(proc, stderr, self.dir / stderr_name)

    def vault(self):  # type: ignore[no-untyped-def]
        from vault.core import Vault

        return Vault.open(self.database_url, bytes.fromhex(self.key))


class Scrub:
    """A running `tokenbunker scrub`; killed by `cleanup()` if still alive."""

    def __init__(self, proc: subprocess.Popen[bytes], stderr_file: IO[bytes], stderr_path: Path) -> None:
        self.proc = proc
        self._stderr_file = stderr_file
        self.stderr_path = stderr_path

    @property
    def stderr(self) -> str:
        self._stderr_file.flush()
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.cleanup()
            raise AssertionError(f"tokenbunker scrub did not exit within {timeout} s\n{self.stderr}") from None

    def terminate_and_wait(self, timeout: float) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.wait(timeout)
        return code, time.monotonic() - started

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass
        self._stderr_file.close()


def wait_for_lines(path_or_reader, count: int, timeout: float):  # type: ignore[no-untyped-def]
    """Lines read from a LineReader until `count` are there (or the deadline passes)."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while len(lines) < count:
        lines.append(path_or_reader.readline(deadline))
    return lines


def assert_clean_stderr(text: str) -> None:
    assert "Traceback" not in text, text
    assert "internal error" not in text, text


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM of a live process, in KiB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def wait_with_rusage(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Reap `proc` with wait4 and return its peak RSS in KiB (ru_maxrss); sets proc.returncode."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return int(usage.ru_maxrss)
        time.sleep(0.05)
    proc.kill()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    raise AssertionError(f"the process did not exit within {timeout} s")
