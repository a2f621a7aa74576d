"""Fixtures for the end-to-end tests: every process started here is stopped when the test ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import Server


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[[Path, dict[str, str], str], Server]]:
    """start_server(config, env, name) -> a ready Server; killed at teardown if the test did not stop it."""
    started: list[Server] = []

    def start(config: Path, env: dict[str, str], name: str) -> Server:
        server = Server(config, env, tmp_path, name)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()
