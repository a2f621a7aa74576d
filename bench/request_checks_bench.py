"""What reading a request as the app will costs per flow: the checks issue 12 added, each timed against the work
it sits beside, in this one process.

Run from the repository root: `.venv/bin/python bench/request_checks_bench.py` (~10 s). A measurement, not a test:
it prints microseconds per call and ratios, and always exits 0.

- path: proxy_addons.paths (decode once, dot segments, candidates) against the raw-path split it replaced;
- JSON: load_json(unique=True) (duplicate keys refused) against plain json.loads, on a signup body;
- echo: echo.brought_tokens (tokens a client brings, never revealed back) on the same request;
- multipart: multipart.parts (strict parse and the Werkzeug and python-multipart cross-check) on a 3-field form,
  against Werkzeug's decoder alone;
- the lot against one proxied flow's CPU in the sidecar (~1.5-2 ms here, bench/proxy_bench.py).
"""

from __future__ import annotations

import json
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mitmproxy import http  # noqa: E402
from werkzeug.sansio.multipart import Data, Epilogue, MultipartDecoder, NeedData  # noqa: E402

from proxy_addons import echo, multipart, paths  # noqa: E402
from proxy_addons.rewrite import load_json  # noqa: E402

FLOW_CPU_US = 1800.0  # one tokenizing flow's proxy CPU at concurrency 1 (bench/proxy_bench.py, case c)


def per_call(fn, number: int = 20000) -> float:  # type: ignore[no-untyped-def]
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    body = json.dumps({"email": "jane.doe@example.com", "name": "Jane Doe", "phone": "+44 7700 900123",
                       "contacts": [{"phone": "+44 7700 900124"}], "note": "hello"}).encode()
    request = http.Request.make("POST", "http://app.internal/api/users?x=1", body,
                                {"Content-Type": "application/json", "X-Forwarded-For": "203.0.113.7"})
    raw_path = request.data.path.partition(b"?")[0]
    form = (b"--b\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\njane@example.com\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nJane Doe\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n"
            b"Content-Type: text/plain\r\n\r\nhello\r\n--b--\r\n")

    def werkzeug_only() -> None:
        decoder = MultipartDecoder(b"b")
        decoder.receive_data(form)
        decoder.receive_data(None)
        while not isinstance(event := decoder.next_event(), Epilogue | NeedData):
            if isinstance(event, Data):
                pass

    rows = [
        ("path: raw split (before)", lambda: request.path.split("?", 1)[0], None),
        ("path: canonical + candidates", lambda: paths.match_candidates(paths.canonical(raw_path)), 0),
        ("JSON: json.loads (before)", lambda: json.loads(body), None),
        ("JSON: load_json(unique=True)", lambda: load_json(body, unique=True), 2),
        ("echo: brought_tokens", lambda: echo.brought_tokens(request, body), None),
        ("multipart: Werkzeug alone", werkzeug_only, None),
        ("multipart: parts (ours + 2 cross-checks)", lambda: multipart.parts(form, b"b"), 5),
    ]
    timed = [(name, per_call(fn, 2000 if "multipart" in name else 20000), base) for name, fn, base in rows]
    print(f"{'case':44} {'us/call':>9}  ratio")
    for name, us, base in timed:
        ratio = f"{us / timed[base][1]:.2f}x of \"{timed[base][0]}\"" if base is not None else ""
        print(f"{name:44} {us:9.2f}  {ratio}")
    added_json = timed[1][1] - timed[0][1] + timed[3][1] - timed[2][1]
    print(f"\nadded per JSON flow on a route that also reveals (path + duplicate check + echo scan): "
          f"{added_json + timed[4][1]:.1f} us, {100 * (added_json + timed[4][1]) / FLOW_CPU_US:.1f}% of a flow's "
          f"~{FLOW_CPU_US / 1000:.1f} ms of proxy CPU")


if __name__ == "__main__":
    main()
