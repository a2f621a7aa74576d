"""`tokenbunker scrub` as a real process (contract: shared/contracts/cli.md): stdin or files to stdout, one line out for
each line in, flushed as it goes, quiet and quick on a closed pipe or SIGTERM, bounded memory, bytes kept."""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import LineReader
from tests.e2e.scrubhelpers import (
    IP_RULES,
    TOKEN,
    Scrub,
    Setup,
    assert_clean_stderr,
    wait_for_lines,
    wait_with_rusage,
)

START = 30.0  # the first line may wait for the process to start and open the vault
PROMPT = 2.0  # each later line must come back within this
ROTATED = 15.0  # lines written around a rotation must come back within this
RULES = IP_RULES % "1h" + "  - {detect: [email], action: redact}\n"
MAX_RSS_MIB = 400  # a sanity bound: the interpreter and its libraries alone take ~80 MiB
GROWTH_MIB = 40  # what five times the input may add, at most

MakeSetup = Callable[..., Setup]


@pytest.fixture
def started() -> Iterator[list[Scrub]]:
    procs: list[Scrub] = []
    yield procs
    for proc in procs:
        proc.cleanup()


@pytest.fixture
def make_setup(tmp_path: Path, database_url: str) -> MakeSetup:
    def make(logs: str = RULES, **kwargs: bool) -> Setup:
        return Setup(tmp_path, database_url, logs, **kwargs)

    return make


def reveal(setup: Setup, tokens: list[bytes]) -> list[str | None]:
    vault = setup.vault()
    try:
        return vault.detokenize([t.decode() for t in tokens])
    finally:
        vault.close()


def test_stdin_to_stdout(make_setup: MakeSetup) -> None:
    setup = make_setup()
    raw = (b"GET / from 203.0.113.5 by jo@example.com\n"
           b"\n"
           b"\xff\xfe not utf-8 \xc3\x28 from 2001:db8::5 \xe9\x80\x00\n"
           b"again 203.0.113.5\r\n"
           b"last line without newline 198.51.100.1")
    result = setup.run(data=raw)
    assert result.returncode == 0, result.stderr
    assert_clean_stderr(result.stderr.decode())
    out = result.stdout
    assert out.count(b"\n") == raw.count(b"\n") and not out.endswith(b"\n")
    lines = out.split(b"\n")
    tokens = TOKEN.findall(out)
    assert len(tokens) == 4
    assert lines[0] == b"GET / from " + tokens[0] + b" by [redacted]"
    assert lines[1] == b""
    assert lines[2] == b"\xff\xfe not utf-8 \xc3\x28 from " + tokens[1] + b" \xe9\x80\x00"  # other bytes unharmed
    assert lines[3] == b"again " + tokens[0] + b"\r"  # same IP, same token
    assert lines[4] == b"last line without newline " + tokens[3]
    for value in (b"203.0.113.5", b"2001:db8::5", b"198.51.100.1", b"jo@example.com"):
        assert value not in out
    assert reveal(setup, tokens) == ["203.0.113.5", "2001:db8::5", "203.0.113.5", "198.51.100.1"]
    # A second run (a new process, an empty cache) gives the same tokens: they are deterministic in the vault.
    again = setup.run(data=b"x 2001:db8::5 y 203.0.113.5\n")
    assert again.returncode == 0, again.stderr
    assert again.stdout == b"x " + tokens[1] + b" y " + tokens[0] + b"\n"


def test_files_in_order(make_setup: MakeSetup, tmp_path: Path) -> None:
    setup = make_setup()
    first, second, empty = tmp_path / "a.log", tmp_path / "b.log", tmp_path / "empty.log"
    first.write_bytes(b"a1 10.0.0.1\na2 10.0.0.2\n")
    second.write_bytes(b"b1 10.0.0.1\nb2 \xff 10.0.0.3\n")
    empty.write_bytes(b"")
    result = setup.run(str(first), str(empty), str(second))
    assert result.returncode == 0, result.stderr
    assert_clean_stderr(result.stderr.decode())
    lines = result.stdout.split(b"\n")
    assert [line.split(b" ")[0] for line in lines[:-1]] == [b"a1", b"a2", b"b1", b"b2"] and lines[-1] == b""
    tokens = TOKEN.findall(result.stdout)
    assert len(tokens) == 4 and tokens[0] == tokens[2] and len(set(tokens)) == 3
    assert lines[3] == b"b2 \xff " + tokens[3]
    assert reveal(setup, tokens) == ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.3"]

    missing = setup.run(str(first), str(tmp_path / "missing.log"))
    assert missing.returncode == 1
    stderr = missing.stderr.decode()
    assert_clean_stderr(stderr)
    assert "missing.log" in stderr and "No such file" in stderr


def test_pipe_lines_come_back_promptly(make_setup: MakeSetup, started: list[Scrub]) -> None:
    """Line by line through pipes, stdin kept open: each scrubbed line is flushed at once (`tail -F | scrub`)."""
    setup = make_setup()
    scrub = setup.start()
    started.append(scrub)
    assert scrub.proc.stdin is not None and scrub.proc.stdout is not None
    reader = LineReader(scrub.proc.stdout)
    scrub.proc.stdin.write(b"warm up 192.0.2.1\n")
    scrub.proc.stdin.flush()
    first = reader.readline(time.monotonic() + START)
    assert first.startswith("warm up tbk_")
    seen: dict[str, str] = {}
    for i in range(8):
        ip = f"192.0.2.{i % 4 + 10}"  # new values, then values seen before
        scrub.proc.stdin.write(f"line {i} from {ip} to x{i}@example.com\n".encode())
        scrub.proc.stdin.flush()
        sent = time.monotonic()
        line = reader.readline(sent + PROMPT)
        token = TOKEN.search(line.encode())
        assert token is not None and line == f"line {i} from {token.group().decode()} to [redacted]"
        assert seen.setdefault(ip, token.group().decode()) == token.group().decode()
    # SIGTERM while it waits for more input (a partial line pending): a clean exit, quickly.
    scrub.proc.stdin.write(b"partial 192.0.2.99")
    scrub.proc.stdin.flush()
    time.sleep(0.2)
    code, took = scrub.terminate_and_wait(3.0)
    assert code == 0, scrub.stderr
    assert took < 3.0
    assert_clean_stderr(scrub.stderr)


def test_reader_closes_early(make_setup: MakeSetup, tmp_path: Path, started: list[Scrub]) -> None:
    """`tokenbunker scrub < big.log | head -n 1`: exits quietly and quickly once head has gone."""
    setup = make_setup()
    big = tmp_path / "big.log"
    line = b'203.0.113.%d - - [10/Oct/2024:13:55:36 +0000] "GET / HTTP/1.1" 200 612 "-" "curl/8"\n'
    big.write_bytes(b"".join(line % (i % 200 + 1) for i in range(60_000)))
    with big.open("rb") as source:
        scrub = setup.start(stdin=source, stderr_name="head1.stderr")
    started.append(scrub)
    assert scrub.proc.stdout is not None
    head = subprocess.run(["head", "-n", "1"], stdin=scrub.proc.stdout, capture_output=True, timeout=60,
                          check=False)
    scrub.proc.stdout.close()
    assert head.stdout.startswith(b"tbk_") and head.stdout.count(b"\n") == 1
    code = scrub.wait(10)
    assert code in (0, -13), scrub.stderr  # 0, or killed by SIGPIPE
    assert_clean_stderr(scrub.stderr)

    # The same with a live input: the reader goes away between two lines.
    scrub = setup.start(stderr_name="head2.stderr")
    started.append(scrub)
    assert scrub.proc.stdin is not None and scrub.proc.stdout is not None
    reader = LineReader(scrub.proc.stdout)
    scrub.proc.stdin.write(b"one 10.0.0.1\n")
    scrub.proc.stdin.flush()
    assert reader.readline(time.monotonic() + START).startswith("one tbk_")
    scrub.proc.stdout.close()
    for i in range(3):
        try:
            scrub.proc.stdin.write(f"more {i} 10.0.0.{i + 2}\n".encode())
            scrub.proc.stdin.flush()
        except BrokenPipeError:
            break
        time.sleep(0.1)
    code = scrub.wait(5)
    assert code in (0, -13), scrub.stderr
    assert_clean_stderr(scrub.stderr)


def test_follow_rotation_then_sigterm(make_setup: MakeSetup, tmp_path: Path, started: list[Scrub]) -> None:
    setup = make_setup()
    log = tmp_path / "access.log"
    log.write_bytes(b"a1 10.0.0.1\n")
    scrub = setup.start("--follow", "--from-start", str(log))
    started.append(scrub)
    assert scrub.proc.stdout is not None
    reader = LineReader(scrub.proc.stdout)
    assert reader.readline(time.monotonic() + START).startswith("a1 tbk_")
    with log.open("ab") as old:
        old.write(b"a2 10.0.0.2\n")
    log.rename(tmp_path / "access.log.1")
    log.write_bytes(b"b1 10.0.0.3\nb2 10.0.0.1\n")
    # Functional, not timed: one CI run under full load once took longer than 5 s here (the poll is 0.2 s).
    lines = wait_for_lines(reader, 3, ROTATED)
    with log.open("ab") as new:
        new.write(b"b3 10.0.0.4\n")
    lines += wait_for_lines(reader, 1, ROTATED)
    assert [line.split(" ")[0] for line in lines] == ["a2", "b1", "b2", "b3"]
    assert all(line.split(" ")[1].startswith("tbk_") for line in lines)
    # SIGTERM while following: a clean exit, quickly.
    code, took = scrub.terminate_and_wait(3.0)
    assert code == 0, scrub.stderr
    assert took < 3.0
    assert_clean_stderr(scrub.stderr)


def test_config_without_log_rules(make_setup: MakeSetup) -> None:
    setup = make_setup(routes_only=True)
    result = setup.run(data=b"10.0.0.1\n", timeout=30)
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert_clean_stderr(stderr)
    assert "no `logs:` rules" in stderr and str(setup.rules) in stderr
    assert result.stdout == b""


def _big_log(path: Path, megabytes: int) -> tuple[int, set[bytes]]:
    """A combined-format log of about `megabytes` MB with many client addresses, and one 6 MB line of no newline
    in it; returns its line count and its addresses."""
    rng = random.Random(7)
    ips = {f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}".encode() for _ in range(3000)}
    ips |= {f"2001:db8:{rng.randrange(1, 65536):x}::{rng.randrange(1, 65536):x}".encode() for _ in range(500)}
    pool = sorted(ips)
    block = b"".join(
        rng.choice(pool) + b' - - [10/Oct/2024:13:55:36 +0000] "GET /p?q=' + str(i).encode() +
        b' HTTP/1.1" 200 612 "-" "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0.0.0"\n'
        for i in range(5000)
    )
    lines = 0
    with path.open("wb") as out:
        written = 0
        while written < megabytes << 20:
            out.write(block)
            written += len(block)
            lines += 5000
            if lines == 50_000:
                out.write(b"long " + b"x" * (6 << 20) + b" end\n")
                written += 6 << 20
                lines += 1
    return lines, ips


def _scrub_big(setup: Setup, path: Path, expected_lines: int, ips: set[bytes], started: list[Scrub]) -> int:
    """Scrub `path` through stdin, check every line came out scrubbed, and return the process's peak RSS (KiB)."""
    with path.open("rb") as source:
        scrub = setup.start(stdin=source, stderr_name=f"{path.name}.stderr")
    started.append(scrub)
    assert scrub.proc.stdout is not None
    count, bad, tail = 0, 0, b""
    first_fields: set[bytes] = set()
    while True:
        chunk = scrub.proc.stdout.read1(1 << 20)
        if not chunk:
            break
        data = tail + chunk
        if b"\n" not in data:
            tail = data
            continue
        complete, _, tail = data.rpartition(b"\n")
        for line in complete.split(b"\n"):
            count += 1
            field = line.split(b" ", 1)[0]
            if not (field.startswith(b"tbk_") or field == b"long"):
                bad += 1
            if len(first_fields) < 10_000:
                first_fields.add(field)
    assert tail == b""
    max_rss_kib = wait_with_rusage(scrub.proc, 120)
    assert scrub.proc.returncode == 0, scrub.stderr
    assert_clean_stderr(scrub.stderr)
    assert count == expected_lines
    assert bad == 0
    assert not (first_fields & ips)
    return max_rss_kib


def test_50mb_input_with_bounded_memory(make_setup: MakeSetup, tmp_path: Path, started: list[Scrub]) -> None:
    """Memory does not grow with the input: a 50 MB log (with a 6 MB line in it) peaks where a 10 MB one does."""
    setup = make_setup()
    small, big = tmp_path / "small.log", tmp_path / "big.log"
    small_lines, small_ips = _big_log(small, 10)
    big_lines, big_ips = _big_log(big, 50)
    assert big.stat().st_size >= 50 << 20
    small_peak = _scrub_big(setup, small, small_lines, small_ips, started)
    big_peak = _scrub_big(setup, big, big_lines, big_ips, started)
    assert big_peak - small_peak < GROWTH_MIB * 1024, f"peak RSS {small_peak // 1024} MiB for 10 MB, " \
                                                       f"{big_peak // 1024} MiB for 50 MB"
    assert big_peak < MAX_RSS_MIB * 1024, f"peak RSS {big_peak // 1024} MiB"
