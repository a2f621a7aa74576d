"""`tokenbunker proxy`: mitmproxy run lean, with only the addons a sidecar needs, and Tokenbunker's addon.

mitmdump's full addon chain (flow dumping, console output, playback, ...) costs time on every flow; the sidecar
needs the proxy core, TLS, and its own addon. The options of the addons left out are still registered, so every
mitmproxy command-line option parses, but only these addons act on flows.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from mitmproxy import addonmanager, master, options
from mitmproxy.addons import (
    anticache,
    anticomp,
    block,
    blocklist,
    browser,
    clientplayback,
    command_history,
    comment,
    core,
    cut,
    disable_h2c,
    dns_resolver,
    dumper,
    errorcheck,
    export,
    keepserving,
    maplocal,
    mapremote,
    modifybody,
    modifyheaders,
    next_layer,
    onboarding,
    proxyauth,
    proxyserver,
    readfile,
    save,
    savehar,
    script,
    serverplayback,
    stickyauth,
    stickycookie,
    strip_dns_https_records,
    tlsconfig,
    update_alt_svc,
    upstream_auth,
)

from proxy_addons.accesslog import AccessLog
from proxy_addons.tokenize import Tokenbunker


class LeanMaster(master.Master):
    def __init__(self, opts: options.Options, event_loop: object = None) -> None:
        super().__init__(opts, event_loop=event_loop, with_termlog=True)  # type: ignore[arg-type]
        self.addons.add(
            core.Core(),
            block.Block(),
            proxyauth.ProxyAuth(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            tlsconfig.TlsConfig(),
            upstream_auth.UpstreamAuth(),
            update_alt_svc.UpdateAltSvc(),
            disable_h2c.DisableH2C(),
            script.ScriptLoader(),
            keepserving.KeepServing(),
            errorcheck.ErrorCheck(),
            Tokenbunker(),
            AccessLog(),  # after the sidecar: it logs the flow as the sidecar left it
        )
        loader = addonmanager.Loader(self)
        for idle in (browser.Browser(), strip_dns_https_records.StripDnsHttpsRecords(), blocklist.BlockList(),
                     anticache.AntiCache(), anticomp.AntiComp(), clientplayback.ClientPlayback(),
                     command_history.CommandHistory(), comment.Comment(), cut.Cut(), export.Export(),
                     onboarding.Onboarding(), dns_resolver.DnsResolver(), serverplayback.ServerPlayback(),
                     mapremote.MapRemote(), maplocal.MapLocal(), modifybody.ModifyBody(),
                     modifyheaders.ModifyHeaders(), stickyauth.StickyAuth(), stickycookie.StickyCookie(),
                     save.Save(), savehar.SaveHar(), dumper.Dumper(), readfile.ReadFileStdin()):
            if hasattr(idle, "load"):
                idle.load(loader)


def run(argv: Sequence[str], config_path: str | None) -> int:
    """Run until stopped; mitmproxy's own arguments pass through, with defaults taken from config.yaml."""
    from mitmproxy.tools import cmdline
    from mitmproxy.tools.main import run as run_master

    from vault.config import load_config

    config = load_config(config_path)
    args = list(argv)
    given = {a.split("=", 1)[0] for a in args if a.startswith("-")}
    given_sets = _set_keys(args)
    defaults: list[str] = []
    for key, value in (("termlog_verbosity", "warn"), ("connection_strategy", "lazy"),
                       # "-": no config file, defaults and the environment only (there is no config.yaml here).
                       ("tokenbunker_config", config.path or "-"),
                       ("tokenbunker_client_ip", config.proxy.log_client_ip)):
        if key not in given_sets:
            defaults += ["--set", f"{key}={value}"]
    if not given & {"--listen-host"}:
        defaults += ["--listen-host", config.proxy.listen_host]
    if not given & {"--listen-port", "-p"}:
        defaults += ["--listen-port", str(config.proxy.listen_port)]
    if not given & {"--mode", "-m"} and config.proxy.upstream:
        defaults += ["--mode", f"reverse:{config.proxy.upstream}"]
    if config_path:
        os.environ.setdefault("TOKENBUNKER_CONFIG", config_path)
    run_master(LeanMaster, cmdline.mitmdump, defaults + args)
    return 0


def _set_keys(args: Sequence[str]) -> set[str]:
    """The option names the user set with `--set K=V` or `--set=K=V`: their values win over our defaults."""
    keys = set()
    for i, arg in enumerate(args):
        value = arg[len("--set="):] if arg.startswith("--set=") else (
            args[i + 1] if arg == "--set" and i + 1 < len(args) else None)
        if value:
            keys.add(value.split("=", 1)[0])
    return keys


def parse(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    known, rest = parser.parse_known_args(list(argv))
    return known.config, rest
