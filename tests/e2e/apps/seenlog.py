"""The record an app behind the sidecar keeps of every request: one JSON line per request, appended to a file.

Shared by the apps in this folder (run as scripts, so this module is imported by its bare name). A record holds
what the app routed on and parsed and the bytes it received, so a test can look for a personal value in any of
them. Bytes are kept as base64 so that nothing is lost to a text encoding.
"""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any

TEST_ID = "x-test-id"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class SeenLog:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.lock = threading.Lock()
        self.path.write_text("", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=True, default=repr) + "\n"
        with self.lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
