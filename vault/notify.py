"""Messages to people (login codes): appended to a local outbox file in development, else sent by SMTP (email) or
an HTTP SMS gateway. Sending happens on a background thread, so an answer never waits on a mail server, and a
known identity (a message goes out) answers as fast as an unknown one (nothing goes out)."""

from __future__ import annotations

import json
import logging
import os
import queue
import smtplib
import ssl
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

from vault.config import NotifySettings, parse_duration

log = logging.getLogger("tokenbunker.notify")


@dataclass(frozen=True)
class Message:
    to: str
    channel: str  # email or sms
    subject: str
    body: str

    def __repr__(self) -> str:  # an address and a code: never in a log or a traceback
        return f"Message(channel={self.channel!r}, <hidden>)"


class Sender(Protocol):
    def send(self, message: Message) -> None: ...


class OutboxFile:
    """One JSON line per message ({"to", "channel", "subject", "body"}), for development and tests. The file is
    created readable by its owner only: it holds codes that log people in."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def send(self, message: Message) -> None:
        line = json.dumps({"to": message.to, "channel": message.channel, "subject": message.subject,
                           "body": message.body}, ensure_ascii=False) + "\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as handle:
                handle.write(line)


class Smtp:
    def __init__(self, settings: NotifySettings) -> None:
        self.s = settings
        self.timeout = parse_duration(settings.timeout)

    def send(self, message: Message) -> None:
        mail = EmailMessage()
        mail["From"] = self.s.email_from
        mail["To"] = message.to
        mail["Subject"] = message.subject
        mail.set_content(message.body)
        host, port = self.s.smtp_host or "localhost", self.s.smtp_port
        context = ssl.create_default_context()
        if self.s.smtp_security == "tls":
            client: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=self.timeout, context=context)
        else:
            client = smtplib.SMTP(host, port, timeout=self.timeout)
        with client:
            if self.s.smtp_security == "starttls":
                client.starttls(context=context)
            if self.s.smtp_user:
                client.login(self.s.smtp_user, self.s.smtp_password or "")
            client.send_message(mail)


class SmsGateway:
    """POSTs the configured body template with {to} and {body} filled in (JSON-escaped for a JSON template)."""

    def __init__(self, settings: NotifySettings) -> None:
        assert settings.sms_url
        self.s = settings
        self.timeout = parse_duration(settings.timeout)

    def send(self, message: Message) -> None:
        as_json = "json" in self.s.sms_content_type
        def fill(v: str) -> str:
            return json.dumps(v)[1:-1] if as_json else urllib.parse.quote_plus(v)
        payload = self.s.sms_body.replace("{to}", fill(message.to)).replace("{body}", fill(message.body))
        request = urllib.request.Request(self.s.sms_url or "", data=payload.encode(), method="POST",
                                         headers={"Content-Type": self.s.sms_content_type})
        if self.s.sms_auth_header:
            name, _, value = self.s.sms_auth_header.partition(":")
            request.add_header(name.strip(), value.strip())
        with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310 (the operator's URL)
            if not 200 <= answer.status < 300:
                raise OSError(f"the SMS gateway answered {answer.status}")


class Notifier:
    """Routes each message to its channel's sender, from one background thread."""

    def __init__(self, email: Sender | None, sms: Sender | None) -> None:
        self.email, self.sms = email, sms
        self._queue: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: NotifySettings) -> Notifier:
        if settings.outbox:
            outbox = OutboxFile(settings.outbox)
            return cls(outbox, outbox)
        return cls(Smtp(settings) if settings.smtp_host else None,
                   SmsGateway(settings) if settings.sms_url else None)

    def can_send(self, channel: str) -> bool:
        return (self.email if channel == "email" else self.sms) is not None

    def send(self, message: Message) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="tokenbunker-notify", daemon=True)
                self._thread.start()
        self._queue.put(message)

    def _loop(self) -> None:
        while (message := self._queue.get()) is not None:
            sender = self.email if message.channel == "email" else self.sms
            if sender is None:
                log.warning("no %s sender is configured (notify.*): a message was not sent", message.channel)
                continue
            try:
                sender.send(message)
            except Exception as exc:  # the address is not in the log; the error's type and the channel are
                log.error("sending a %s message failed (%s)", message.channel, type(exc).__name__)

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)
