"""Shared helpers for the end-to-end tests: real `tokenbunker` processes on free loopback ports."""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import requests

REPO = Path(__file__).resolve().parents[2]
ROOT_TOKEN_LINE = re.compile(r"^tokenbunker: root token \(shown once; send it as X-Bunker-Token\): (\S+)$", re.M)
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def new_master_key() -> str:
    return secrets.token_hex(32)


def cli_env(**overrides: str | None) -> dict[str, str]:
    """The test runner's environment without any TOKENBUNKER_* setting, plus `overrides` (None removes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENBUNKER_")}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tokenbunker_cli", *args]


def run_cli(*args: str, env: dict[str, str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_command(*args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def write_config(path: Path, database_url: str, *, api: dict[str, int] | None = None) -> Path:
    """A config file; values are written as JSON strings (valid YAML) so URLs with `%` or `?` stay intact."""
    lines = ["vault:", f"  database_url: {json.dumps(database_url)}"]
    if api:
        lines.append("api:")
        lines += [f"  {key}: {value}" for key, value in api.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class Server:
    """One `tokenbunker serve` process; stdout and stderr go to files under `workdir`."""

    def __init__(self, config: Path, env: dict[str, str], workdir: Path, name: str) -> None:
        self.config = config
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []
        self.returncode: int | None = None

    def start(self) -> Server:
        for _attempt in range(3):
            if self._start_once():
                return self
            # Another process took the free port between our probe and the server's bind: draw again.
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
        raise AssertionError(f"the server could not get a free port\n{self.output()}")

    def _start_once(self) -> bool:
        out, err = self.stdout_path.open("ab"), self.stderr_path.open("ab")
        self._files = [out, err]
        self.proc = subprocess.Popen(
            cli_command("serve", "--config", str(self.config), "--listen", f"127.0.0.1:{self.port}"),
            cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._close_files()
                if "cannot listen on" in self.stderr:
                    return False
                raise AssertionError(f"the server exited with {self.proc.returncode} before it was ready\n"
                                     f"{self.output()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"the server was not ready within {START_TIMEOUT} s\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send `sig` and wait for the exit; a server that ignores it is killed and the test fails."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"the server did not stop within {STOP_TIMEOUT} s of signal {sig}") from None
        self._close_files()
        self.returncode = self.proc.returncode
        return self.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_files()

    def _close_files(self) -> None:
        for handle in self._files:
            handle.close()
        self._files = []

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def output(self) -> str:
        return f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"

    def root_tokens_shown(self) -> list[str]:
        return ROOT_TOKEN_LINE.findall(self.stdout)

    def call(self, method: str, path: str, token: str | None, body: Any = None, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["X-Bunker-Token"] = token
        if body is not None:
            kwargs["json"] = body
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kwargs)


class LineReader:
    """Reads lines from a child's unbuffered binary pipe with a deadline (readline() alone could hang forever)."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.fd = pipe.fileno()
        self.buffer = b""

    def readline(self, deadline: float) -> str:
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no line from the child process in time")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise EOFError("the child process closed its output")
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()
