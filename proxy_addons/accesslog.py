"""The sidecar's own access log, written already scrubbed: one nginx "combined" line per flow (the request target
percent-decoded), passed through the `logs:` rules (scrub.rules, else proxy.rules) before it touches the disk, so
the client's IP (and anything else the rules name) is a token there, in the same token space as the sidecar's and
the log scrubber's.

    tokenbunker proxy --set tokenbunker_access_log=/var/log/tokenbunker/access.log   (or proxy.access_log)

Lines are scrubbed and written by a thread of their own, so the event loop never waits on the vault or the disk.
Fail closed: a line that cannot be scrubbed (the vault is down) is dropped and counted, never written as it was;
with no `logs:` rules the access log refuses to start.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence

from mitmproxy import ctx, exceptions, http

from rules.compiler import RulesError, load_rules
from vault.tokens import TokenRequest

log = logging.getLogger("tokenbunker.proxy")
QUEUE_MAX = 10_000  # lines waiting; past it new lines are dropped (and counted), the proxy never blocks
BATCH = 500
Tokenizer = Callable[[Sequence[TokenRequest]], list[tuple[str, int | None]]]


def combined_line(flow: http.HTTPFlow, now: float) -> str:
    """nginx's "combined" format, from what the sidecar forwarded (the request as rewritten, tokens in place)."""
    request, response = flow.request, flow.response
    client = flow.client_conn.peername[0] if flow.client_conn.peername else "-"
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now))
    status = response.status_code if response is not None else 502
    size = len(response.raw_content or b"") if response is not None else 0
    # Percent-decoded, so that the logs: rules' detectors see values as they are (an email as a@b, not a%40b).
    target = "".join(c if c.isprintable() else "?" for c in urllib.parse.unquote(request.path)).replace('"', "%22")
    referer = request.headers.get("referer", "-").replace('"', "%22")
    agent = request.headers.get("user-agent", "-").replace('"', "%22")
    return (f'{client} - - [{stamp}] "{request.method} {target} {request.http_version}" {status} {size} '
            f'"{referer}" "{agent}"').replace("\n", " ")


class AccessLog:
    def __init__(self) -> None:
        self.path = ""
        self.dropped = 0
        self.written = 0
        self._queue: queue.Queue[str | None] = queue.Queue(QUEUE_MAX)
        self._thread: threading.Thread | None = None

    def load(self, loader: object) -> None:
        loader.add_option(  # type: ignore[attr-defined]
            "tokenbunker_access_log", str, "",
            "Write an access log here, scrubbed by the rules' logs: section (default: proxy.access_log; '' off).")

    def configure(self, updated: set[str]) -> None:
        if "tokenbunker_access_log" not in updated and self._thread is not None:
            return
        sidecar = ctx.master.addons.get("tokenbunker")
        config = getattr(sidecar, "config", None)
        path = ctx.options.tokenbunker_access_log or (config.proxy.access_log if config is not None else None) or ""
        if path == self.path and self._thread is not None:
            return
        self._stop()
        self.path = path
        if not path:
            return
        files = [f for f in (config.log_rule_files if config is not None else ()) if os.path.exists(f)]
        try:
            rules = load_rules(files).logs if files else ()
        except RulesError as exc:
            raise exceptions.OptionsError(f"tokenbunker_access_log: {exc}") from None
        if not rules:
            raise exceptions.OptionsError("tokenbunker_access_log: the rules have no logs: section to scrub the "
                                          "access log with (say what to do with client IPs there)")
        tokenize = _tokenizer(sidecar)
        from rules.scrub import LogScrubber

        scrubber = LogScrubber(rules, tokenize)
        self._thread = threading.Thread(target=self._write_loop, args=(scrubber,), name="tokenbunker-accesslog",
                                        daemon=True)
        self._thread.start()

    def response(self, flow: http.HTTPFlow) -> None:
        self._enqueue(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.response is None:
            self._enqueue(flow)

    def _enqueue(self, flow: http.HTTPFlow) -> None:
        if self._thread is None:
            return
        try:
            self._queue.put_nowait(combined_line(flow, time.time()))
        except queue.Full:
            self.dropped += 1

    def _write_loop(self, scrubber: object) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        with os.fdopen(fd, "a", encoding="utf-8", errors="surrogateescape") as out:
            while True:
                line = self._queue.get()
                if line is None:
                    return
                lines = [line]
                while len(lines) < BATCH:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        self._queue.put(None)
                        break
                    lines.append(more)
                try:
                    clean = scrubber.scrub("\n".join(lines))  # type: ignore[attr-defined]
                except Exception as exc:  # the vault is down, say: these lines are lost, never written raw
                    self.dropped += len(lines)
                    log.warning("tokenbunker: %d access log line(s) dropped: they could not be scrubbed (%s)",
                                len(lines), type(exc).__name__)
                    continue
                out.write(clean + "\n")
                out.flush()
                self.written += len(lines)

    def _stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=5)

    def done(self) -> None:
        self._stop()
        if self.dropped:
            log.warning("tokenbunker: access log: %d line(s) dropped (not scrubbable, or the queue was full)",
                        self.dropped)


def _tokenizer(sidecar: object) -> Tokenizer:
    """The vault the sidecar uses: in-process, or the `serve` it calls (with its scoped token)."""
    client = getattr(sidecar, "client", None)
    vault = getattr(client, "vault", None)
    if vault is not None:
        tokenize: Tokenizer = vault.tokenize_with_expiry
        return tokenize
    sync = getattr(client, "tokenize_sync", None)
    if sync is None:
        raise exceptions.OptionsError("tokenbunker_access_log: the sidecar has no vault to tokenize with")
    return sync  # type: ignore[no-any-return]
