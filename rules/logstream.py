"""Streams for `tokenbunker scrub`: files or stdin to stdout, in order, flushed as soon as a read is scrubbed.

Bytes are read as UTF-8 with surrogateescape: a byte that is not valid UTF-8 becomes a stand-in character and
turns back into the same byte on the way out, so a line that is not UTF-8 passes through unharmed (only the values
the rules look for are changed), and a JSON line's non-ASCII text stays UTF-8. Memory stays bounded: a chunk at a time,
and a line longer than the chunk limit is scrubbed in pieces rather than held whole.
"""

from __future__ import annotations

import gc
import os
import select
import time
from collections.abc import Callable
from typing import BinaryIO

from rules.scrub import LogScrubber

CHUNK = 4 << 20  # bytes per read: each read with new values is one vault transaction (one commit)
MAX_CARRY = 4 << 20  # a partial line longer than this is scrubbed without waiting for its end


class Stream:
    def __init__(self, scrubber: LogScrubber, out: BinaryIO) -> None:
        self.scrubber = scrubber
        self.out = out
        self.carry = b""

    def feed(self, data: bytes) -> None:
        """Scrub every whole line in carry + data; keep the unfinished last line for later."""
        data = self.carry + data
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) < MAX_CARRY:
            self.carry = data
            return
        if cut == 0:
            cut = len(data)
        self.carry = data[cut:]
        self._write(data[:cut])

    def finish(self) -> None:
        if self.carry:
            self._write(self.carry)
            self.carry = b""

    def _write(self, data: bytes) -> None:
        # The cyclic collector is paused while a buffer is scrubbed: the scrubber makes no cycles, but tens of
        # thousands of short-lived tuples per buffer set it off again and again, each time walking what survives.
        paused = gc.isenabled()
        gc.disable()
        try:
            text = self.scrubber.scrub(decode(data))
        finally:
            if paused:
                gc.enable()
        self.out.write(encode(text))
        self.out.flush()


def decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate from a JSON "\ud800" escape: written as it was decoded
        return text.encode("utf-8", "surrogatepass")


def scrub_fd(fd: int, stream: Stream) -> None:
    """Read until end of file. A pipe's read returns what is there (64 KiB at most), so lines go out as they come
    in; while more is already waiting, it is read too (up to CHUNK) and scrubbed in the same batch, so a fast
    writer (`cat big.log |`) costs one vault call per CHUNK rather than one per 64 KiB."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        data = os.read(fd, CHUNK)
        if not data:
            break
        if len(data) < CHUNK and poller.poll(0):
            parts, size = [data], len(data)
            while size < CHUNK and poller.poll(0):
                more = os.read(fd, CHUNK - size)
                if not more:
                    break  # end of file: the next read says so again
                parts.append(more)
                size += len(more)
            data = b"".join(parts)
        stream.feed(data)
    stream.finish()


def follow(path: str, stream: Stream, stopped: Callable[[], bool], poll: float = 0.2,
           from_start: bool = False) -> None:
    """`tail -F`: read a growing file, and when it is rotated (replaced or truncated) finish the old one and go on
    with the new one from its start."""
    existed = os.path.exists(path)
    handle = _open_wait(path, stopped)
    if handle is None:
        return
    if existed and not from_start:
        # What was there before we started is not ours to print; a file that appears later is read from its start.
        handle.seek(0, os.SEEK_END)
    try:
        while not stopped():
            data = handle.read(CHUNK)
            if data:
                stream.feed(data)
                continue
            rotated = _rotated(path, handle)
            if rotated:
                stream.finish()
                handle.close()
                handle = _open_wait(path, stopped)
                if handle is None:
                    return
                continue
            time.sleep(poll)
    finally:
        stream.finish()
        if handle is not None:
            handle.close()


def _open_wait(path: str, stopped: Callable[[], bool]) -> BinaryIO | None:
    while not stopped():
        try:
            return open(path, "rb")  # noqa: SIM115 (closed by follow)
        except FileNotFoundError:
            time.sleep(0.2)
    return None


def _rotated(path: str, handle: BinaryIO) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False  # between the move and the new file: keep reading the old one meanwhile
    mine = os.fstat(handle.fileno())
    return (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev) or now.st_size < handle.tell()
