"""Streams of the log scrubber (rules/logstream.py): chunks to whole lines, pipes, and `follow` across rotations."""

from __future__ import annotations

import json
import os
import select
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from rules.compiler import compile_text
from rules.logstream import CHUNK, MAX_CARRY, Stream, follow, scrub_fd
from rules.scrub import LogScrubber
from vault.tokens import TokenRequest

WAIT = 5.0  # seconds a line may take to show up before the test fails


def no_vault(reqs: Sequence[TokenRequest]) -> list[tuple[str, int | None]]:
    raise AssertionError(f"unexpected vault call: {reqs!r}")


def fake_tokens(reqs: Sequence[TokenRequest]) -> list[tuple[str, int | None]]:
    """Stands in for the vault: a readable token per value, never expiring."""
    return [(f"TOK<{r.value}>", None) for r in reqs]


Tokenize = Callable[[Sequence[TokenRequest]], list[tuple[str, int | None]]]


def make_scrubber(*items: str, tokenize: Tokenize = no_vault) -> LogScrubber:
    text = "version: 1\nlogs:\n" + "".join(f"  - {item}\n" for item in items)
    return LogScrubber(compile_text(text, "test.yaml")[1], tokenize)


def truncating() -> LogScrubber:
    return make_scrubber("{detect: [ipv4, ipv6], action: truncate}")


class Sink:
    """A thread-safe binary output that records what was flushed, write by write."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.data = b""
        self.pending = b""
        self.writes = 0

    def write(self, data: bytes) -> int:
        with self.lock:
            self.pending += data
            self.writes += 1
        return len(data)

    def flush(self) -> None:
        with self.lock:
            self.data += self.pending
            self.pending = b""

    def lines(self) -> list[bytes]:
        with self.lock:
            return self.data.splitlines()

    def wait_for(self, count: int, timeout: float = WAIT) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.lines()
            if len(lines) >= count:
                return lines
            time.sleep(0.02)
        raise AssertionError(f"expected {count} lines within {timeout} s, got {self.lines()!r}")


# -- Stream ----------------------------------------------------------------------------------------------------------


def test_partial_lines_across_chunks() -> None:
    sink = Sink()
    stream = Stream(truncating(), sink)  # type: ignore[arg-type]
    stream.feed(b"a 10.0.0.1 x\nb 10.")
    assert sink.data == b"a 10.0.0.0 x\n"  # the whole line went out (flushed) at once; the partial one waits
    stream.feed(b"1.2")
    assert sink.data == b"a 10.0.0.0 x\n"
    stream.feed(b".3 y\nc 192.168.7.")
    assert sink.data == b"a 10.0.0.0 x\nb 10.1.2.0 y\n"
    stream.feed(b"9\n")
    assert sink.data == b"a 10.0.0.0 x\nb 10.1.2.0 y\nc 192.168.7.0\n"
    stream.finish()
    assert sink.data == b"a 10.0.0.0 x\nb 10.1.2.0 y\nc 192.168.7.0\n" and sink.pending == b""


def test_byte_by_byte_equals_all_at_once() -> None:
    text = b"one 10.0.0.1\n\ntwo 2001:db8:1:2::3 and 172.16.5.4\nthree\r\nfour 8.8.8.8 end\n"
    whole, split = Sink(), Sink()
    a = Stream(truncating(), whole)  # type: ignore[arg-type]
    a.feed(text)
    a.finish()
    b = Stream(truncating(), split)  # type: ignore[arg-type]
    for i in range(len(text)):
        b.feed(text[i:i + 1])
    b.finish()
    assert whole.data == split.data == (b"one 10.0.0.0\n\ntwo 2001:db8:1:: and 172.16.5.0\nthree\r\nfour 8.8.8.0 end\n")


def test_last_line_without_newline_is_kept_as_is() -> None:
    sink = Sink()
    stream = Stream(truncating(), sink)  # type: ignore[arg-type]
    stream.feed(b"first 10.0.0.1\nlast 10.0.0.2 no newline")
    assert sink.data == b"first 10.0.0.0\n"
    stream.finish()
    assert sink.data == b"first 10.0.0.0\nlast 10.0.0.0 no newline"
    stream.finish()  # a second finish writes nothing more
    assert sink.data == b"first 10.0.0.0\nlast 10.0.0.0 no newline"


def test_a_line_longer_than_max_carry_is_not_held_whole() -> None:
    sink = Sink()
    stream = Stream(truncating(), sink)  # type: ignore[arg-type]
    long_line = b"start 10.0.0.1 " + b"x" * (MAX_CARRY + CHUNK) + b" end"
    for i in range(0, len(long_line), CHUNK):
        stream.feed(long_line[i:i + CHUNK])
        assert len(stream.carry) <= MAX_CARRY  # memory stays bounded
    assert len(sink.data) > 0  # part of the unfinished line already went out
    stream.feed(b"\nnext 10.0.0.2\n")
    stream.finish()
    expected = b"start 10.0.0.0 " + b"x" * (MAX_CARRY + CHUNK) + b" end\nnext 10.0.0.0\n"
    assert sink.data == expected
    assert sink.data.count(b"\n") == 2


def test_non_utf8_bytes_pass_unharmed() -> None:
    sink = Sink()
    stream = Stream(make_scrubber("{detect: [ipv4, email], action: redact}"), sink)  # type: ignore[arg-type]
    raw = b"\xff\xfe\x00 from 10.0.0.1 \xc3\x28 \xe9t\xe9 jo@example.com \x80\n\xf0\x9f\x8e\x89 caf\xc3\xa9\n"
    stream.feed(raw)
    stream.finish()
    assert sink.data == (b"\xff\xfe\x00 from [redacted] \xc3\x28 \xe9t\xe9 [redacted] \x80\n"
                         b"\xf0\x9f\x8e\x89 caf\xc3\xa9\n")


def test_json_lines_with_unicode_escapes() -> None:
    """A JSON line is rewritten; what comes out must still be the same document, in valid UTF-8 (the input was)."""
    sink = Sink()
    scrubber = make_scrubber('{json: "$.ip", action: tokenize, kind: ip}', tokenize=fake_tokens)
    stream = Stream(scrubber, sink)  # type: ignore[arg-type]
    lines = [
        '{"ip": "10.0.0.1", "msg": "caf\\u00e9 \\u4e2d\\u6587 \\ud83c\\udf89"}',
        '{"ip": "10.0.0.2", "msg": "café 中文 🎉"}',
    ]
    stream.feed("\n".join(lines).encode() + b"\nnext\n")
    stream.finish()
    out = sink.data.decode("utf-8")  # fails if the rewrite produced bytes that are not UTF-8
    first, second, third = out.splitlines()
    assert json.loads(first) == {"ip": "TOK<10.0.0.1>", "msg": "café 中文 🎉"}
    assert json.loads(second) == {"ip": "TOK<10.0.0.2>", "msg": "café 中文 🎉"}
    assert third == "next"


def test_scrub_fd_sends_lines_as_they_come() -> None:
    """Over a pipe, each line goes out before the writer has finished (what `tail -F log | scrub` relies on)."""
    read_fd, write_fd = os.pipe()
    sink = Sink()
    stream = Stream(truncating(), sink)  # type: ignore[arg-type]
    worker = threading.Thread(target=scrub_fd, args=(read_fd, stream), daemon=True)
    worker.start()
    try:
        for i in range(1, 6):
            os.write(write_fd, f"line {i} from 10.0.0.{i}\n".encode())
            assert sink.wait_for(i)[-1] == f"line {i} from 10.0.0.0".encode()
        os.write(write_fd, b"tail 10.0.0.9")
    finally:
        os.close(write_fd)
    worker.join(WAIT)
    assert not worker.is_alive()
    os.close(read_fd)
    assert sink.data.endswith(b"line 5 from 10.0.0.0\ntail 10.0.0.0")


class WaitingPipe:
    """Stands in for `os` and `select` in rules.logstream: reads return the queued pieces one by one (at most n
    bytes each), and poll() says more is waiting while pieces are left."""

    POLLIN = select.POLLIN

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)
        self.reads: list[int] = []

    def read(self, _fd: int, n: int) -> bytes:
        if not self.pieces:
            return b""
        piece = self.pieces.pop(0)
        if len(piece) > n:
            self.pieces.insert(0, piece[n:])
            piece = piece[:n]
        self.reads.append(len(piece))
        return piece

    def register(self, _fd: int, _events: int) -> None:
        pass

    def poll_ready(self, _timeout: int) -> list[tuple[int, int]]:
        return [(0, self.POLLIN)] if self.pieces else []


def test_scrub_fd_reads_on_while_more_is_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fast writer's pipe gives 64 KiB a read: what is already waiting joins the same batch (one scrub, one
    write), up to CHUNK; what comes later is a batch of its own."""
    import rules.logstream as logstream

    def run(pieces: list[bytes]) -> tuple[Sink, WaitingPipe]:
        pipe = WaitingPipe(pieces)
        poller = type("Poller", (), {"register": pipe.register, "poll": lambda _self, t: pipe.poll_ready(t)})
        monkeypatch.setattr(logstream, "os", type("Os", (), {"read": staticmethod(pipe.read)}))
        monkeypatch.setattr(logstream, "select", type("Select", (), {"POLLIN": select.POLLIN, "poll": poller}))
        sink = Sink()
        scrub_fd(0, Stream(truncating(), sink))  # type: ignore[arg-type]
        return sink, pipe

    lines = [f"line {i} from 10.0.0.{i}\n".encode() for i in range(1, 6)]
    sink, pipe = run(lines)
    assert sink.writes == 1  # five reads, one batch
    assert sink.data == b"".join(f"line {i} from 10.0.0.0\n".encode() for i in range(1, 6))

    line = b"x" * 1000 + b" 10.0.0.1\n"
    sink, pipe = run([line * 100] * 100)  # ~10 MB waiting, in ~100 KB pieces
    assert max(pipe.reads) <= CHUNK
    assert sink.writes == 3  # 4 MiB, 4 MiB, the rest
    assert sink.data == (b"x" * 1000 + b" 10.0.0.0\n") * 10000


# -- follow ----------------------------------------------------------------------------------------------------------


class Follower:
    """follow() in a thread, stopped at the end of the test."""

    def __init__(self, path: Path, *, from_start: bool) -> None:
        self.path = path
        self.sink = Sink()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(from_start,), daemon=True)
        self.thread.start()

    def _run(self, from_start: bool) -> None:
        try:
            follow(str(self.path), Stream(truncating(), self.sink), self.stop.is_set,  # type: ignore[arg-type]
                   poll=0.05, from_start=from_start)
        except BaseException as exc:  # noqa: BLE001 (reported by close())
            self.errors.append(exc)

    def wait_open(self) -> None:
        """Until the thread has the file open (then a moment, for its seek to the end)."""
        deadline = time.monotonic() + WAIT
        target = os.path.realpath(self.path)
        while time.monotonic() < deadline:
            for fd in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink(f"/proc/self/fd/{fd}") == target:
                        time.sleep(0.1)
                        return
                except OSError:
                    pass
            time.sleep(0.02)
        raise AssertionError("follow() did not open the file")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "follow() did not stop"
        if self.errors:
            raise self.errors[0]


@pytest.fixture
def followers() -> object:
    started: list[Follower] = []

    def start(path: Path, *, from_start: bool = True) -> Follower:
        f = Follower(path, from_start=from_start)
        started.append(f)
        return f

    yield start
    for f in started:
        f.stop.set()
        f.thread.join(WAIT)


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)


def test_follow_sees_appended_lines(tmp_path: Path, followers) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    log.write_text("old 10.0.0.1\n")
    f = followers(log, from_start=False)
    f.wait_open()
    append(log, "new 10.0.0.2\n")
    assert f.sink.wait_for(1) == [b"new 10.0.0.0"]  # not from the start
    append(log, "half 10.0.")
    time.sleep(0.2)
    append(log, "0.3 done\nmore 10.0.0.4\n")
    assert f.sink.wait_for(3) == [b"new 10.0.0.0", b"half 10.0.0.0 done", b"more 10.0.0.0"]
    f.close()


def test_follow_from_start(tmp_path: Path, followers) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    log.write_text("old 10.0.0.1\n")
    f = followers(log, from_start=True)
    assert f.sink.wait_for(1) == [b"old 10.0.0.0"]
    f.close()


def test_follow_rename_rotation(tmp_path: Path, followers) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    log.write_text("a1 10.0.0.1\na2 10.0.0.2\n")
    f = followers(log)
    f.sink.wait_for(2)
    for round_ in range(2):
        # The last lines of the old file, written just before it is moved away, then the new file's lines.
        append(log, f"a3-{round_} 10.0.0.3\n")
        log.rename(tmp_path / f"access.log.{round_ + 1}")
        log.write_text(f"b1-{round_} 10.1.0.1\n")
        append(log, f"b2-{round_} 10.1.0.2\n")
        time.sleep(0.3)
        append(log, f"b3-{round_} 10.1.0.3\n")
        f.sink.wait_for(2 + 4 * (round_ + 1))
        time.sleep(0.2)
    assert f.sink.lines() == [
        b"a1 10.0.0.0", b"a2 10.0.0.0",
        b"a3-0 10.0.0.0", b"b1-0 10.1.0.0", b"b2-0 10.1.0.0", b"b3-0 10.1.0.0",
        b"a3-1 10.0.0.0", b"b1-1 10.1.0.0", b"b2-1 10.1.0.0", b"b3-1 10.1.0.0",
    ]
    f.close()


def test_follow_rotation_with_a_gap_before_the_new_file(tmp_path: Path, followers) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    log.write_text("a1 10.0.0.1\n")
    f = followers(log)
    f.sink.wait_for(1)
    append(log, "a2 10.0.0.2\n")
    log.rename(tmp_path / "access.log.1")
    time.sleep(0.4)  # no file at the path for a while
    log.write_text("b1 10.1.0.1\n")
    assert f.sink.wait_for(3) == [b"a1 10.0.0.0", b"a2 10.0.0.0", b"b1 10.1.0.0"]
    f.close()


def test_follow_copytruncate_rotation(tmp_path: Path, followers) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    log.write_text("".join(f"c{i} 10.0.0.{i} with some padding to make the file long\n" for i in range(1, 4)))
    f = followers(log)
    f.sink.wait_for(3)
    shutil.copyfile(log, tmp_path / "access.log.1")
    with log.open("r+") as handle:
        handle.truncate(0)
    append(log, "d1 10.2.0.1\n")
    lines = f.sink.wait_for(4)
    append(log, "d2 10.2.0.2\n")
    lines = f.sink.wait_for(5)
    assert lines[3:] == [b"d1 10.2.0.0", b"d2 10.2.0.0"]
    f.close()


def test_follow_a_file_that_appears_later(tmp_path: Path, followers) -> None:  # type: ignore[no-untyped-def]
    """Like `tail -F`: a file created after the follower started is read from its first line (as a rotated-in
    file is); lines logged before the follower noticed it are not lost."""
    log = tmp_path / "late.log"
    f = followers(log, from_start=False)
    time.sleep(0.3)
    log.write_text("first 10.0.0.1\n")
    append(log, "second 10.0.0.2\n")
    assert f.sink.wait_for(2, timeout=2.0) == [b"first 10.0.0.0", b"second 10.0.0.0"]
    f.close()


def test_follow_stops_on_the_flag_and_flushes_a_partial_line(tmp_path: Path, followers) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    log.write_text("one 10.0.0.1\npartial 10.0.0.2")
    f = followers(log)
    f.sink.wait_for(1)
    started = time.monotonic()
    f.close()
    assert time.monotonic() - started < 1.0
    assert f.sink.data == b"one 10.0.0.0\npartial 10.0.0.0"


def test_follow_stops_while_waiting_for_a_missing_file(tmp_path: Path, followers) -> None:  # type: ignore[no-untyped-def]
    f = followers(tmp_path / "never.log")
    time.sleep(0.2)
    started = time.monotonic()
    f.close()
    assert time.monotonic() - started < 1.0
    assert f.sink.data == b""
