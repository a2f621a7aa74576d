"""A real nginx (the Debian package) writes its access log while `tokenbunker scrub --follow` scrubs it.

The scrubber talks to a `tokenbunker serve` over HTTP (proxy.vault_url), and the tokens are checked through that same
API: no address of the raw log is left in the scrubbed one, line for line, and each token resolves to its address
until its ttl has passed. Halfway, the log is rotated the nginx way (rename, then SIGUSR1 to reopen).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import REPO, Server, cli_env, free_port, new_master_key
from tests.e2e.scrubhelpers import TOKEN, Scrub, assert_clean_stderr, scrub_executable

NGINX = "/usr/sbin/nginx"
NGINX_PACKAGE = "nginx"  # Debian 12: the nginx package itself holds /usr/sbin/nginx
TTL = 5  # seconds
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
START = 30.0


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


class Nginx:
    def __init__(self, workdir: Path, port: int, v6: bool) -> None:
        self.dir = workdir
        self.port = port
        self.access_log = workdir / "access.log"
        self.error_log = workdir / "error.log"
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (workdir / sub).mkdir()
        user = "user root;\n" if os.geteuid() == 0 else ""
        listen = f"    listen 127.0.0.1:{port};\n" + (f"    listen [::1]:{port};\n" if v6 else "")
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(
            f"{user}worker_processes 1;\npid {workdir}/nginx.pid;\nerror_log {self.error_log} info;\n"
            "events { worker_connections 128; }\n"
            "http {\n"
            f"  access_log {self.access_log} combined;\n"
            f"  client_body_temp_path {workdir}/body;\n  proxy_temp_path {workdir}/proxy;\n"
            f"  fastcgi_temp_path {workdir}/fastcgi;\n  uwsgi_temp_path {workdir}/uwsgi;\n"
            f"  scgi_temp_path {workdir}/scgi;\n"
            "  server {\n" + listen +
            "    location / { return 200 \"ok\\n\"; }\n"
            "    location /missing { return 404; }\n"
            "  }\n}\n",
            encoding="utf-8",
        )
        self.out = (workdir / "nginx.out").open("wb")
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(workdir), "-e", str(self.error_log), "-c", str(self.conf), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stdout=self.out, stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited with {self.proc.returncode}: {self.diagnostics()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    if self.access_log.exists():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"nginx did not listen within 10 s: {self.diagnostics()}")

    def diagnostics(self) -> str:
        texts = []
        for path in (self.dir / "nginx.out", self.error_log):
            if path.exists():
                texts.append(path.read_text(errors="replace")[-2000:])
        return "\n".join(texts)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.out.close()


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[bool], Nginx]]:
    started: list[Nginx] = []

    def start(v6: bool) -> Nginx:
        workdir = tmp_path / "nginx"
        workdir.mkdir()
        for _attempt in range(3):
            server = Nginx(workdir, free_port(), v6)
            started.append(server)
            try:
                server.wait_ready()
                return server
            except AssertionError:
                if "Address already in use" not in server.diagnostics():
                    raise
                server.stop()
                for path in workdir.iterdir():
                    if path.is_file():
                        path.unlink()
        raise AssertionError("nginx could not get a free port")

    yield start
    for server in started:
        server.stop()


def traffic(port: int, sources: list[str], round_: int) -> None:
    """A few requests from each source address; the requests themselves carry addresses too (query, referer,
    user agent), as real ones do."""
    for n, source in enumerate(sources):
        host = "::1" if ":" in source else "127.0.0.1"
        conn = http.client.HTTPConnection(host, port, timeout=5, source_address=(source, 0))
        try:
            for i in range(3):
                path = f"/item/{round_}/{i}?from=198.51.100.{n * 10 + i + 1}" if i != 2 else "/missing"
                conn.request("GET", path, headers={
                    "User-Agent": f"probe/1.0 (client 203.0.113.{n + 1}; Linux x86_64) Chrome/124.0.0.0",
                    "Referer": f"http://192.0.2.{round_ + 1}/from/{n}",
                })
                response = conn.getresponse()
                response.read()
                assert response.status in (200, 404)
        finally:
            conn.close()


def has_open(pid: int, path: Path) -> bool:
    target = os.path.realpath(path)
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
        except OSError:
            pass
    return False


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def raw_addresses(raw: str) -> set[str]:
    """Every address in the raw log: each line's remote_addr, and IPv4 addresses anywhere."""
    found = {line.split(" ", 1)[0] for line in raw.splitlines() if line}
    found |= {m for m in IPV4.findall(raw) if not m.startswith("124.0.0")}  # not the Chrome/124.0.0.0 version
    return found


def test_nginx_access_log_scrubbed_live(tmp_path: Path, database_url: str, nginx,  # type: ignore[no-untyped-def]
                                        start_server: Callable[[Path, dict[str, str], str], Server]) -> None:
    if not os.access(NGINX, os.X_OK):  # a failure, not a skip: CI must install it
        pytest.fail(f"{NGINX} is missing: install the Debian package `{NGINX_PACKAGE}` "
                    f"(apt-get install -y {NGINX_PACKAGE})", pytrace=False)
    v6 = ipv6_loopback()
    key, root = new_master_key(), secrets.token_urlsafe(24)
    env = cli_env(TOKENBUNKER_MASTER_KEY=key, TOKENBUNKER_ROOT_TOKEN=root, TOKENBUNKER_PROXY_VAULT_TOKEN=root)
    serve_config = tmp_path / "serve.yaml"
    serve_config.write_text(f"vault:\n  database_url: {json.dumps(database_url)}\n", encoding="utf-8")
    server = start_server(serve_config, env, "serve")

    web = nginx(v6)
    rules = tmp_path / "logs.yaml"
    rules.write_text("version: 1\nlogs:\n"
                     f"  - {{detect: [ipv4, ipv6], action: tokenize, kind: ip, deterministic: true, ttl: {TTL}s}}\n",
                     encoding="utf-8")
    scrub_config = tmp_path / "scrub.yaml"
    scrub_config.write_text(
        f"vault:\n  database_url: {json.dumps(database_url)}\n"
        f"proxy:\n  vault_url: {json.dumps(server.url)}\n"
        f"scrub:\n  rules: [{json.dumps(str(rules))}]\n", encoding="utf-8")
    scrubbed_path = tmp_path / "scrubbed.log"
    with scrubbed_path.open("wb") as scrubbed_out, (tmp_path / "scrub.stderr").open("wb") as scrub_err:
        proc = subprocess.Popen(
            [*scrub_executable(), "scrub", "--config", str(scrub_config), "--follow", str(web.access_log)],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=scrubbed_out, stderr=scrub_err)
    scrub = Scrub(proc, (tmp_path / "scrub.stderr").open("ab"), tmp_path / "scrub.stderr")
    try:
        wait_until(lambda: has_open(proc.pid, web.access_log) or proc.poll() is not None, START,
                   "tokenbunker scrub to open the access log")
        assert proc.poll() is None, scrub.stderr
        time.sleep(0.3)  # its seek to the end of the log

        sources = ["127.0.0.1", "127.0.0.2", "127.0.0.3"] + (["::1"] if v6 else [])

        def scrubbed_lines(count: int) -> list[str]:
            def enough() -> bool:
                return scrubbed_path.read_bytes().count(b"\n") >= count or proc.poll() is not None

            wait_until(enough, 10, f"{count} scrubbed lines")
            assert proc.poll() is None, scrub.stderr
            return scrubbed_path.read_text(encoding="utf-8").splitlines()

        def resolve(tokens: list[str]) -> dict[str, str | None]:
            answer = server.call("POST", "/v1/detokenize", root, {"tokens": tokens})
            assert answer.status_code == 200, answer.text
            return dict(zip(tokens, answer.json()["values"], strict=True))

        def check(raw: str, scrubbed: list[str]) -> dict[str, str]:
            """Line for line: no raw address left, and the tokens put back give the raw line."""
            raw_lines = raw.splitlines()
            assert len(scrubbed) == len(raw_lines)
            text = "\n".join(scrubbed)
            for address in raw_addresses(raw):
                assert address not in text, address
            tokens = sorted(set(TOKEN.findall(text.encode())))
            values = resolve([t.decode() for t in tokens])
            assert None not in values.values(), "a token did not resolve within its ttl"
            for raw_line, line in zip(raw_lines, scrubbed, strict=True):
                assert TOKEN.sub(lambda m: values[m.group().decode()].encode(), line.encode()).decode() == raw_line
            # Same address, same token (within the ttl window).
            by_value: dict[str, set[str]] = {}
            for token, value in values.items():
                by_value.setdefault(value, set()).add(token)  # type: ignore[arg-type]
            assert all(len(ts) == 1 for ts in by_value.values()), by_value
            return {value: next(iter(ts)) for value, ts in by_value.items()}  # type: ignore[misc]

        # Round 1: traffic while the scrubber follows the log.
        skip = web.access_log.stat().st_size  # the scrubber follows from the end, as `tail -F` does
        first_request = time.time()
        traffic(web.port, sources, 0)
        # nginx writes a line after it has answered: the client can be a moment ahead of the log.
        wait_until(lambda: web.access_log.read_bytes()[skip:].count(b"\n") >= 3 * len(sources), 5,
                   "nginx to log every request")
        raw1 = web.access_log.read_bytes()[skip:].decode("utf-8")
        assert raw1.count("\n") == 3 * len(sources)
        assert {line.split(" ", 1)[0] for line in raw1.splitlines()} == set(sources)
        tokens1 = check(raw1, scrubbed_lines(raw1.count("\n")))
        assert time.time() - first_request < TTL - 1, "too slow to check the tokens within their ttl"
        assert set(sources) <= set(tokens1)

        # Rotate the nginx way (rename, then USR1 to reopen), then wait out the ttl.
        web.access_log.rename(tmp_path / "nginx" / "access.log.1")
        web.proc.send_signal(signal.SIGUSR1)
        wait_until(web.access_log.exists, 5, "nginx to reopen its access log")
        time.sleep(max(0.0, first_request + TTL + 1.5 - time.time()))
        assert set(resolve(list(tokens1.values())).values()) == {None}, "tokens still resolve after their ttl"

        # Round 2, in the new file: new tokens for the same addresses, and they resolve.
        traffic(web.port, sources, 1)
        wait_until(lambda: web.access_log.read_bytes().count(b"\n") >= 3 * len(sources), 5,
                   "nginx to log every request")
        raw2 = web.access_log.read_text(encoding="utf-8")
        assert raw2.count("\n") == 3 * len(sources)
        n1 = len(raw1.splitlines())
        scrubbed = scrubbed_lines(n1 + len(raw2.splitlines()))
        assert len(scrubbed) == n1 + len(raw2.splitlines())
        for address in raw_addresses(raw1 + raw2):
            assert address not in "\n".join(scrubbed), address
        tokens2 = check(raw2, scrubbed[n1:])
        for source in sources:
            assert tokens2[source] != tokens1[source]

        code, took = scrub.terminate_and_wait(3.0)
        assert code == 0 and took < 3.0
        assert_clean_stderr(scrub.stderr)
    finally:
        scrub.cleanup()
