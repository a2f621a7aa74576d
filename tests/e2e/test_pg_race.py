"""Two OS processes tokenize the same values deterministically at the same moment: one token per value.

The unique lookup column and the retry in Vault.tokenize must make the loser of each race adopt the winner's
token, so both processes hand out identical tokens and the table holds each value once.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.e2e.helpers import REPO, LineReader, cli_env
from vault.core import Vault

VALUES_PER_ROUND = 500
BATCH = 50
ROUNDS = 3
PROCESSES = 2

# One job per stdin line: {"start": unix time, "values": [...]}. The worker sleeps until `start`, tokenizes the
# values in batches, and answers one line: the tokens as JSON (or {"error": ...}).
WORKER = f"""
import json, os, sys, time
from vault.core import Vault
from vault.tokens import TokenRequest

vault = Vault.open(sys.argv[1], bytes.fromhex(os.environ["TOKENBUNKER_MASTER_KEY"]))
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    while (left := job["start"] - time.time()) > 0:
        time.sleep(min(left, 0.001))
    out = []
    try:
        for i in range(0, len(job["values"]), {BATCH}):
            batch = job["values"][i:i + {BATCH}]
            out += vault.tokenize([TokenRequest(v, "email", "email", True) for v in batch])
    except Exception as exc:
        print(json.dumps({{"error": type(exc).__name__ + ": " + str(getattr(exc, "message", exc))}}), flush=True)
        continue
    print(json.dumps(out), flush=True)
vault.close()
"""


def _counts(database_url: str) -> tuple[int, int]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            total, with_lookup = conn.execute(text("SELECT count(*), count(lookup) FROM tb_tokens")).one()
    finally:
        engine.dispose()
    return int(total), int(with_lookup)


def _race(database_url: str, tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    # Migrate (and store the key check value) first, so the workers only race on tokenize.
    Vault.open(database_url, key).close()

    env = cli_env(TOKENBUNKER_MASTER_KEY=key.hex())
    logs = [(tmp_path / f"worker{n}.stderr").open("wb") for n in range(PROCESSES)]
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, database_url], cwd=REPO, env=env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=log, bufsize=0)
        for log in logs
    ]
    readers = [LineReader(p.stdout) for p in procs]  # type: ignore[arg-type]

    def stderr_of_workers() -> str:
        return "\n".join((tmp_path / f"worker{n}.stderr").read_text(errors="replace") for n in range(PROCESSES))

    try:
        deadline = time.monotonic() + 30
        try:
            for reader in readers:
                assert reader.readline(deadline) == "ready"
        except (TimeoutError, EOFError) as exc:
            raise AssertionError(f"a worker did not start: {exc}\n{stderr_of_workers()}") from None

        check = Vault.open(database_url, key, auto_migrate=False)
        try:
            for round_no in range(ROUNDS):
                tag = secrets.token_hex(4)
                values = [f"race{round_no}.{i}.{tag}@example.com" for i in range(VALUES_PER_ROUND)]
                job = json.dumps({"start": time.time() + 0.5, "values": values}).encode() + b"\n"
                for proc in procs:
                    assert proc.stdin is not None
                    proc.stdin.write(job)
                    proc.stdin.flush()
                deadline = time.monotonic() + 60
                try:
                    answers = [json.loads(reader.readline(deadline)) for reader in readers]
                except (TimeoutError, EOFError) as exc:
                    raise AssertionError(f"round {round_no}: {exc}\n{stderr_of_workers()}") from None
                for answer in answers:
                    assert isinstance(answer, list), f"round {round_no}: a worker failed: {answer}"
                first, second = answers
                assert len(first) == VALUES_PER_ROUND
                assert first == second, (
                    f"round {round_no}: {sum(a != b for a, b in zip(first, second, strict=True))} values got "
                    "different tokens in the two processes")
                assert len(set(first)) == VALUES_PER_ROUND
                total, with_lookup = _counts(database_url)
                assert (total, with_lookup) == (VALUES_PER_ROUND * (round_no + 1),) * 2
                assert check.detokenize(first) == values
        finally:
            check.close()
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        for log in logs:
            log.close()
    assert [p.returncode for p in procs] == [0] * PROCESSES, stderr_of_workers()
    assert "Traceback" not in stderr_of_workers()


@pytest.mark.pg_only
def test_two_processes_race_on_postgresql(backend: str, database_url: str, tmp_path: Path) -> None:
    assert backend == "postgresql"
    _race(database_url, tmp_path)


def test_two_processes_race(database_url: str, tmp_path: Path) -> None:
    _race(database_url, tmp_path)
