"""A tiny "legacy app" for `tokenbunker up`: it keeps whatever users it is sent, in memory, and shows them back.

Put behind the sidecar, it only ever stores tokens: `GET /api/users` on its own port shows what it holds.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class DemoApp(BaseHTTPRequestHandler):
    users: list[dict[str, object]] = []
    lock = threading.Lock()
    server_version = "demo-legacy-app"

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body, ensure_ascii=False, indent=1).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0].rstrip("/")
        with self.lock:
            if path == "/api/users":
                return self._send(200, {"users": self.users})
            if path.startswith("/api/users/") and path.rsplit("/", 1)[1].isdigit():
                index = int(path.rsplit("/", 1)[1]) - 1
                if 0 <= index < len(self.users):
                    return self._send(200, self.users[index])
        self._send(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0].rstrip("/") != "/api/users":
            return self._send(404, {"error": "not found"})
        length = int(self.headers.get("Content-Length") or 0)
        try:
            user = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self._send(400, {"error": "send JSON"})
        if not isinstance(user, dict):
            return self._send(400, {"error": "send a JSON object"})
        with self.lock:
            user = {"id": len(self.users) + 1, **user}
            self.users.append(user)
        self._send(201, user)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # an access log would print the client's address


def _stop(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def serve(host: str, port: int) -> None:
    import signal

    signal.signal(signal.SIGTERM, _stop)
    try:
        ThreadingHTTPServer((host, port), DemoApp).serve_forever()
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; `up` stops us with SIGTERM
        pass


if __name__ == "__main__":
    import sys

    serve(sys.argv[1], int(sys.argv[2]))
