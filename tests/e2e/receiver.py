"""A real HTTP receiver for callbacks on a free loopback port: it records every request and can fail the first
attempts of each event."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int


class Receiver:
    """`fail_first` attempts of each event id are answered 500 (or `status`), the rest 200."""

    def __init__(self, fail_first: int = 0, status: int = 500, delay: float = 0.0) -> None:
        self.fail_first = fail_first
        self.status = status
        self.delay = delay
        self.received: list[Received] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k: v for k, v in self.headers.items()}
                if owner.delay:
                    time.sleep(owner.delay)
                with owner.lock:
                    event_id = headers.get("X-Tokenbunker-Event-Id", "")
                    tries = sum(1 for r in owner.received if r.headers.get("X-Tokenbunker-Event-Id") == event_id)
                    answer = owner.status if tries < owner.fail_first else 200
                    owner.received.append(Received(headers, body, answer))
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def accepted(self) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.answered == 200]

    def wait_for(self, check: Callable[[Receiver], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check(self):
                return True
            time.sleep(0.05)
        return check(self)
