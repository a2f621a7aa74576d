"""`tokenbunker up`: the vault API, the sidecar and a demo app behind it, as child processes of one command."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from types import FrameType

from vault.config import Config, parse_listen

STARTUP_SECONDS = 30


def _wait_http(url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except OSError as exc:
            if getattr(exc, "code", None):  # any HTTP answer means it is up
                return True
            time.sleep(0.2)
    return False


def _wait_port(host: str, port: int, deadline: float) -> bool:
    import socket

    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def run_all(config: Config, config_path: str | None) -> int:
    me = [sys.executable, "-m", "tokenbunker_cli"]
    with_config = ["--config", config_path] if config_path else []
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    stopping = False

    def stop(_signum: int = 0, _frame: FrameType | None = None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    api_host, api_port = parse_listen(config.api.listen)
    upstream = config.proxy.upstream
    try:
        children.append(("vault", subprocess.Popen([*me, "serve", *with_config])))
        deadline = time.monotonic() + STARTUP_SECONDS
        if not _wait_http(f"http://{_url_host(api_host)}:{api_port}/health", deadline):
            print("tokenbunker: the vault API did not start; see its messages above", file=sys.stderr)
            return 1
        if config.demo.enabled and not upstream:
            demo_host, demo_port = parse_listen(config.demo.listen)
            children.append(("demo", subprocess.Popen([sys.executable, "-m", "proxy_addons.demo", demo_host,
                                                       str(demo_port)])))
            upstream = f"http://{_url_host(demo_host)}:{demo_port}"
            if not _wait_port(demo_host, demo_port, deadline):
                print(f"tokenbunker: the demo app did not start on {config.demo.listen}", file=sys.stderr)
                return 1
        proxy_args = [*me, "proxy", *with_config]
        if upstream:
            proxy_args += ["--mode", f"reverse:{upstream}"]
        children.append(("sidecar", subprocess.Popen(proxy_args)))
        if not _wait_port(config.proxy.listen_host, config.proxy.listen_port, deadline):
            print("tokenbunker: the sidecar did not start; see its messages above", file=sys.stderr)
            return 1
        sidecar = f"http://{_url_host(config.proxy.listen_host)}:{config.proxy.listen_port}"
        portal_note = (f"      (login codes are written to {config.notify.outbox})" if config.notify.outbox else "")
        print(f"""
tokenbunker: up.
  vault API   http://{_url_host(api_host)}:{api_port}/v1/   (X-Bunker-Token: the root token above)
  portal      http://{_url_host(api_host)}:{api_port}/{portal_note}
  DPO console http://{_url_host(api_host)}:{api_port}/dpo   (log in with the root token)
  sidecar     {sidecar}  ->  {upstream or "(forward proxy mode)"}
Try it:
  curl -s {sidecar}/api/users -H 'Content-Type: application/json' \\
       -d '{{"email": "jane@example.com", "name": "Jane Doe", "phone": "07700 900123"}}'
  curl -s {upstream or "<your app>"}/api/users      # what the app behind the sidecar stored: tokens only
Ctrl-C stops everything.""", flush=True)
        while not stopping:
            for name, child in children:
                if child.poll() is not None:
                    print(f"tokenbunker: the {name} process stopped (exit {child.returncode}); stopping the rest",
                          file=sys.stderr)
                    return 1
            time.sleep(0.3)
        return 0
    finally:
        for _name, child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for _name, child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
        print("tokenbunker: stopped", flush=True)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


__all__ = ["run_all"]
