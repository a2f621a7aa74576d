"""The Tokenbunker sidecar as a mitmproxy addon.

    mitmdump -s proxy_addons/tokenize.py --set tokenbunker_config=config.yaml --mode reverse:http://127.0.0.1:8080

Requests are tokenized before they go upstream and responses revealed before they go back, as the rules say. When
a value cannot be protected the flow is answered here with a JSON error and nothing goes upstream (fail closed),
unless the route says `on_error: pass`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
import weakref
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from mitmproxy import ctx, exceptions, http

from proxy_addons import bodylimit, echo, logfilter, paths
from proxy_addons.accesslog import AccessLog
from proxy_addons.rewrite import Blocked, MessageRewriter, ProtectionError
from proxy_addons.vaultclient import HttpVault, InProcessVault, VaultClient
from rules.compiler import RulesError, load_rules
from rules.model import BODY_SELECTORS, Route, Rule, RuleSet
from vault.config import Config, ConfigError, load_config
from vault.errors import Unavailable, VaultError

log = logging.getLogger("tokenbunker.proxy")
RELOAD_SECONDS = 1.0
SWITCH_SECONDS = 0.0005
METHOD_OVERRIDES = ("x-http-method-override", "x-http-method", "x-method-override")


def _reveals(route: Route) -> bool:
    return any(r.action == "detokenize" for r in route.response)


def _needs_body(rules: Sequence[Rule], route: Route | None = None) -> bool:
    """Whether these rules (and, for a request, the route's subject) read the body."""
    selectors = [r.selector for r in rules] + ([route.subject.selector] if route and route.subject else [])
    return any(isinstance(s, BODY_SELECTORS) or getattr(s, "place", "") == "form" for s in selectors)


class _PathProblem:
    """A flow whose path cannot be read one way only: refused at its request, whatever the routes say."""

    def __init__(self, message: str) -> None:
        self.message = message


class Tokenbunker:
    def __init__(self) -> None:
        self.config: Config | None = None
        self.rules: RuleSet | None = None
        self.client: VaultClient | None = None
        self.problem: str | None = "not configured yet"  # while set, every flow is refused: fail closed
        self.max_body = 0
        self.max_values = 0
        self.counts: Counter[str] = Counter()
        # The person a flow is about, for its response: ("token", uuid) once known. Memory only, never logged.
        self._subjects: weakref.WeakKeyDictionary[http.HTTPFlow, tuple[str, str]] = weakref.WeakKeyDictionary()
        # Tokens a flow's request brought in, which its response does not reveal (proxy_addons/echo.py).
        self._brought: weakref.WeakKeyDictionary[http.HTTPFlow, frozenset[str]] = weakref.WeakKeyDictionary()
        self._routes: weakref.WeakKeyDictionary[http.HTTPFlow, Route | _PathProblem | None] = \
            weakref.WeakKeyDictionary()
        # Flows between their request headers and the end of their response (or error): with one alone, the
        # in-process vault may run its transaction on the loop instead of handing it to its writer thread.
        self._active: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()
        self._mtimes: dict[str, float] = {}
        self._reloader: asyncio.Task[None] | None = None

    # -- options ---------------------------------------------------------------------------------------------

    def load(self, loader: object) -> None:
        add = loader.add_option  # type: ignore[attr-defined]
        add("tokenbunker_config", str, "", "Tokenbunker config file (default: $TOKENBUNKER_CONFIG or config.yaml).")
        add("tokenbunker_rules", Sequence[str], [], "Rule files; default: proxy.rules from the config.")
        add("tokenbunker_max_body", int, 0, "Largest body rewritten, in bytes; 0: proxy.max_body_bytes.")
        add("tokenbunker_reload", bool, True, "Reload the rule files when they change.")
        add("tokenbunker_client_ip", str, "drop", "Client addresses in the proxy's log: drop, hash or keep.",
            choices=logfilter.CHOICES)

    def configure(self, updated: set[str]) -> None:
        if "tokenbunker_client_ip" in updated:
            logfilter.install(logfilter.AddressFilter(ctx.options.tokenbunker_client_ip, os.urandom(32)))
        if "flow_detail" in updated and getattr(ctx.options, "flow_detail", 0) > 0 and ctx.master.addons.get("dumper"):
            # mitmdump's flow log prints client addresses and, at higher detail, bodies with revealed values.
            log.warning("tokenbunker: flow_detail set to 0; mitmdump's flow log would show personal data")
            ctx.options.flow_detail = 0
        if not updated & {"tokenbunker_config", "tokenbunker_rules", "tokenbunker_max_body"}:
            return
        try:
            config, files, rules = self._load()
            if self.client is None or self.config is None or (config.proxy, config.vault) != (
                self.config.proxy, self.config.vault
            ):
                self._close_client()
                self.client = self._open_client(config)
        except (ConfigError, RulesError, VaultError) as exc:
            # Whatever was in force is no longer trusted: flows are refused until a configuration loads.
            self.problem = "its configuration did not load"
            message = exc.message if isinstance(exc, VaultError) else str(exc)
            prefix = {ConfigError: "tokenbunker_config: ", RulesError: "tokenbunker rules:\n"}.get(
                type(exc), "tokenbunker: ")
            raise exceptions.OptionsError(prefix + message) from None
        self.config, self.rules = config, rules
        self.max_body = ctx.options.tokenbunker_max_body or config.proxy.max_body_bytes
        self.max_values = config.proxy.max_values_per_message
        self._remember_mtimes(files)
        self.problem = None
        log.info("tokenbunker: %d route(s) from %s", len(rules.routes), ", ".join(files))

    def _load(self) -> tuple[Config, list[str], RuleSet]:
        path = ctx.options.tokenbunker_config
        if not path and not os.environ.get("TOKENBUNKER_CONFIG"):
            # An addon loaded without a config must not guess one (a revert after a failed configure lands here).
            raise ConfigError("set tokenbunker_config (or TOKENBUNKER_CONFIG) to Tokenbunker's config file")
        config = load_config(None if path in ("", "-") else path)
        files = list(ctx.options.tokenbunker_rules) or list(config.proxy.rules)
        return config, files, load_rules(files)

    def _open_client(self, config: Config) -> VaultClient:
        if config.proxy.vault_url:
            if not config.proxy.vault_token:
                raise VaultError("proxy.vault_url is set but no token: set TOKENBUNKER_PROXY_VAULT_TOKEN")
            return HttpVault(config.proxy.vault_url, config.proxy.vault_token)
        from vault.server import open_vault

        client = InProcessVault(open_vault(config), audit_wait=config.proxy.audit_reveals == "strict")
        client.alone = lambda: len(self._active) <= 1
        return client

    def _close_client(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    # -- rule reload -----------------------------------------------------------------------------------------

    def running(self) -> None:
        # Large bodies are worked on in threads (rewrite.OFFLOAD_BYTES). The loop waits for the GIL up to one switch
        # interval each time it wakes; 5 ms, the default, a dozen times per small flow is what a stall is made of.
        sys.setswitchinterval(SWITCH_SECONDS)
        # A full collection holds the GIL while it walks every object; the ones made at start-up (mitmproxy, the
        # vault, the rules) live as long as the process, so they are set aside and never walked again.
        gc.collect()
        gc.freeze()
        if ctx.options.tokenbunker_reload and self._reloader is None:
            self._reloader = asyncio.get_running_loop().create_task(self._watch())

    def _remember_mtimes(self, files: Sequence[str]) -> None:
        self._mtimes = {f: _mtime(f) for f in files}

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_SECONDS)
            current = {f: _mtime(f) for f in self._mtimes}
            if current == self._mtimes:
                continue
            self._mtimes = current
            try:
                self.rules = await asyncio.to_thread(load_rules, list(current))
                log.info("tokenbunker: rules reloaded: %d route(s)", len(self.rules.routes))
            except RulesError as exc:
                log.warning("tokenbunker: new rules refused, the previous ones stay in force:\n%s", exc)

    def done(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
        if self.counts:
            # Route names and counts only: ok, refused (fail closed), passed (on_error: pass), blocked (consent).
            summary = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
            log.warning("tokenbunker: flows by route: %s", summary)
        self._close_client()

    # -- flows -----------------------------------------------------------------------------------------------

    def _route(self, flow: http.HTTPFlow) -> Route | _PathProblem | None:
        """The flow's route, chosen once (at its request headers) and kept for its response, even across a reload.

        It is matched on the path the app will route on (proxy_addons/paths.py), and that path is what goes
        upstream: the app never routes on a spelling the rules did not see."""
        if flow in self._routes:
            return self._routes[flow]
        assert self.rules is not None
        request = flow.request
        raw, sep, query = request.data.path.partition(b"?")
        try:
            path = paths.canonical(raw)
        except paths.PathRefused as exc:
            self._routes[flow] = found = _PathProblem(exc.message)
            return found
        if path != "*" and (encoded := paths.encode(path)).encode() != raw:
            request.data.path = encoded.encode() + sep + query
        # pretty_host parses the Host header: only worth it when some route matches on hosts.
        host = request.pretty_host if self.rules.uses_hosts else ""
        candidates = paths.match_candidates(path)
        route = self.rules.route_for(host, candidates, request.method)
        # Rails, Express's method-override, Symfony and others route a POST by one of these headers instead.
        overrides = {v.strip().upper() for h in METHOD_OVERRIDES for v in request.headers.get_all(h)} - {""}
        for method in overrides - {request.method.upper()}:
            other = self.rules.route_for(host, candidates, method)
            if other is not None and route is not None and other is not route:
                self._routes[flow] = found = _PathProblem("the method override header names another route")
                return found
            route = route or other
        self._routes[flow] = route
        return route

    def _flow_route(self, flow: http.HTTPFlow) -> Route | None:
        route = self._route(flow)
        return route if isinstance(route, Route) else None

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._active.add(flow)
        if self.problem is not None:
            return
        route = self._route(flow)
        if isinstance(route, _PathProblem) or (route is not None and (
                _needs_body(route.request, route) or _reveals(route))):
            flow.request.stream = False  # the whole body is needed before anything may go upstream

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if self.problem is None and (route := self._flow_route(flow)) is not None and _needs_body(route.response):
            flow.response.stream = False  # type: ignore[union-attr]

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        if self.problem is not None:
            self._refuse(flow, None, 503, f"tokenbunker is not ready: {self.problem}")
            return
        route = self._route(flow)
        if isinstance(route, _PathProblem):
            self.counts["path.refused"] += 1
            self._refuse(flow, None, 400, f"request refused: {route.message}")
            return
        if route is None:
            return
        if not (route.request or route.subject):
            if _reveals(route):
                self._remember_brought(flow, route)
            return
        await self._protect(flow, route, flow.request, route.request, read=True)

    def _remember_brought(self, flow: http.HTTPFlow, route: Route) -> None:
        body = flow.request.raw_content
        if body and bodylimit.encodings_of(flow.request.headers.get("content-encoding", "")):
            try:
                body = bodylimit.decode(body, flow.request.headers["content-encoding"], self.max_body)
            except bodylimit.BodyError as exc:
                self.counts[f"{route.name}.refused"] += 1
                self._refuse(flow, route, exc.status, f"request refused: {exc.message}")
                return
        self._brought[flow] = echo.brought_tokens(flow.request, body)

    async def response(self, flow: http.HTTPFlow) -> None:
        try:
            if flow.response is None or flow.metadata.get("tokenbunker", {}).get("refused"):
                return
            route = self._flow_route(flow) if self.problem is None else None
            if route is None or not route.response:
                return
            await self._protect(flow, route, flow.response, route.response, read=False)
        finally:
            self._active.discard(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._active.discard(flow)

    async def _protect(self, flow: http.HTTPFlow, route: Route, message: http.Message, rules: Sequence[Rule],
                       read: bool) -> None:
        assert self.client is not None
        meta = flow.metadata.setdefault("tokenbunker", {"route": route.name})
        try:
            reads_body = _needs_body(rules, route if read else None)
            rewriter = MessageRewriter(message, flow.request, route, rules, self.max_body if reads_body else None,
                                       max_values=self.max_values, is_request=read,
                                       withheld=frozenset() if read else self._brought.get(flow, frozenset()))
            await rewriter.prepare()
            if read and _reveals(route):
                self._brought[flow] = echo.brought_tokens(flow.request, flow.request.raw_content,
                                                          rewriter.json_doc)
            subject = rewriter.subject() if read else self._subjects.get(flow)
            person = await rewriter.apply(self.client, subject)
            if rewriter.unreadable:
                self.counts[f"{route.name}.unreadable_passed"] += 1
                log.warning("tokenbunker: route '%s': a body its rules cannot read passed on, as "
                            "on_unreadable_body says", route.name)
            if rewriter.ownerless:
                self.counts[f"{route.name}.no_subject"] += 1
                log.warning("tokenbunker: route '%s': tokenized without a subject (the route says it is optional)",
                            route.name)
            if read and (person or subject) and route.response:
                self._subjects[flow] = ("token", person) if person else subject  # type: ignore[assignment]
            meta["request" if read else "response"] = rewriter.counts.as_dict()
            self.counts[f"{route.name}.ok"] += 1
        except Blocked as exc:
            self.counts[f"{route.name}.blocked"] += 1
            self._refuse(flow, route, exc.status, exc.message)
        except (ProtectionError, VaultError, Exception) as exc:
            self._failed(flow, route, exc, "request" if read else "response")

    def _failed(self, flow: http.HTTPFlow, route: Route, exc: BaseException, phase: str) -> None:
        where = ""
        if isinstance(exc, ProtectionError):
            reason, status, where = exc.message, exc.status, exc.where
        elif isinstance(exc, Unavailable):
            reason, status = "the vault is unavailable", 503
        elif isinstance(exc, VaultError):
            reason, status = f"the vault refused: {exc.message}", 502
        else:
            # Not a message we wrote: its text might hold a value, so only its type is told.
            reason, status = f"internal error ({type(exc).__name__})", 502
        if route.on_error == "pass" and not (isinstance(exc, ProtectionError) and exc.final):
            self.counts[f"{route.name}.passed"] += 1
            log.warning("tokenbunker: route '%s': %s not protected (%s%s); passed on as on_error says",
                        route.name, phase, f"{where}: " if where else "", reason)
            return
        self.counts[f"{route.name}.refused"] += 1
        self._refuse(flow, route, status, f"{phase} not protected: {reason}", where)

    def _refuse(self, flow: http.HTTPFlow, route: Route | None, status: int, message: str, where: str = "") -> None:
        """Answer the flow here. The client is told the route and the reason; the rule's file and line, which are
        the server's business, go to the log only."""
        name = route.name if route else None
        text = f"route '{name}': {message}" if name and not message.startswith("route ") else message
        log.warning("tokenbunker: %s%s", text, f" (rule at {where})" if where else "")
        flow.metadata.setdefault("tokenbunker", {"route": name})["refused"] = True
        flow.response = http.Response.make(
            status,
            json.dumps({"status": "error", "message": f"tokenbunker: {text}", "route": name}),
            {"Content-Type": "application/json", "Cache-Control": "no-store"},
        )


def _mtime(path: str) -> float:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return -1.0


addons = [Tokenbunker(), AccessLog()]
