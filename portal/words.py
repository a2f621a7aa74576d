"""The audit trail in plain words, for the person it is about: "The sidecar revealed your email to route
sms-gateway, 3 days ago"."""

from __future__ import annotations

from typing import Any

KIND_WORDS = {"ip": "IP address", "card": "card number", "ssn": "social security number", "login": "user name",
              "email": "email address", "phone": "phone number"}
KIND_TITLES = {kind: words[0].upper() + words[1:] for kind, words in KIND_WORDS.items()}


def who(actor: str) -> str:
    if actor == "self" or actor.startswith("login:"):
        return "You"
    if actor == "sidecar":
        return "The sidecar"
    if actor == "root":
        return "An administrator"
    if actor.startswith("dpo:") or actor.startswith("console:"):
        return "Our data protection officer"
    if actor.startswith("xtoken:"):
        name = actor.split(":")[1] if actor.count(":") >= 2 else "an application"
        return f"The application “{name}”"
    if actor.startswith("partner:"):
        return f"Our partner “{actor.split(':', 1)[1]}”"
    if actor in ("scheduler", "retention") or actor.startswith("retention"):
        return "Our retention schedule"
    if actor == "shared-record":
        return "Someone with a link you were given"
    return "Our system"


def kinds(detail: dict[str, Any] | None) -> str:
    names = [KIND_WORDS.get(k, k) for k in (detail or {}).get("kinds", [])]
    if not names:
        return "data"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def sentence(row: dict[str, Any]) -> str:
    """One audit row as a sentence (without the time)."""
    actor, action, detail, route = who(row["who"]), row["action"], row.get("detail") or {}, row.get("route")
    via = f" for route {route}" if route else ""
    you = actor == "You"
    texts = {
        "create": f"{actor} created your record",
        "read": f"{actor} looked at your data" if detail.get("via") != "list" else f"{actor} listed your record",
        "change": f"{actor} changed your profile",
        "forget": f"{actor} deleted your data",
        "tokenize": f"{actor} stored your {kinds(detail)} as {'a token' if detail.get('count', 1) == 1 else 'tokens'}"
                    f"{via}",
        "reveal": (f"{actor} revealed your {kinds(detail)} to route {route}" if row.get("status") == "ok" and route
                   else f"{actor} revealed your {kinds(detail)}" if row.get("status") == "ok"
                   else f"{actor} was refused your {kinds(detail)}{via}: your consent was not given"),
        "consent-give": f"{actor} gave consent to “{detail.get('brief', 'a purpose')}”" if you
        else f"{actor} recorded your consent to “{detail.get('brief', 'a purpose')}”",
        "consent-withdraw": f"{actor} withdrew consent to “{detail.get('brief', 'a purpose')}”" if you
        else f"{actor} recorded that you withdrew consent to “{detail.get('brief', 'a purpose')}”",
        "consent-revoke": f"{actor} ended the purpose “{detail.get('brief', 'a purpose')}” for everyone",
        "consent-read": f"{actor} checked your consent",
        "login": "A login code was sent to you" if row.get("status") == "code-sent" else "You logged in",
        "request-create": f"{actor} asked for a change that waits for our data protection officer",
        "request-approve": f"{actor} approved a request about your data",
        "request-cancel": f"{actor} turned down a request about your data",
        "app-create": f"{actor} created your record in “{detail.get('app', 'an application')}”",
        "app-read": f"{actor} looked at your application records",
        "app-change": f"{actor} changed your record in “{detail.get('app', 'an application')}”",
        "app-delete": f"{actor} deleted your record in “{detail.get('app', 'an application')}”",
        "session-create": f"{actor} recorded a session of yours",
        "session-read": f"{actor} looked at a session of yours",
        "session-delete": f"{actor} deleted a session of yours",
        "share": f"{actor} shared some of your data" + (f" with “{detail['partner']}”" if detail.get("partner")
                                                       else ""),
        "shared-read": f"{actor} read data that was shared with them",
        "export": f"{actor} downloaded your data",
        "token-delete": f"{actor} deleted a token of your {kinds(detail)}",
        "audit-read": f"{actor} looked at the details of this history",
        "retention": f"{actor} ran",
    }
    return texts.get(action, f"{actor}: {action}")


def ago(seconds: int) -> str:
    if seconds < 60:
        return "just now"
    for size, unit in ((86400 * 365, "year"), (86400 * 30, "month"), (86400 * 7, "week"), (86400, "day"),
                       (3600, "hour"), (60, "minute")):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"
