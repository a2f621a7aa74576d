"""A Flask app under waitress that routes every path and records what it parsed (see seenlog.py).

    python tests/e2e/apps/flask_app.py --port 8080 --log seen.jsonl

It answers every request with 200 and the JSON of its record. The record is made in a before_request hook, so it is
there for every path and method, whatever Werkzeug's router would have said (redirect to a merged-slash path, 404):
the test asks what the app saw and would route on (request.path), not whether a view existed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import waitress  # noqa: E402
from flask import Flask, request  # noqa: E402
from seenlog import TEST_ID, SeenLog, b64  # noqa: E402

app = Flask(__name__)
app.config["MAX_CONTENT_LENGTH"] = None
SEEN: SeenLog | None = None


def _record() -> dict[str, Any]:
    environ = request.environ
    body = request.get_data(cache=True)  # read first: request.form below parses from this cached copy
    doc = request.get_json(force=True, silent=True)
    form: list[list[Any]] = []  # [name, value] pairs in order: a name may repeat, or be None for a part without one
    files: list[list[Any]] = []  # [name, filename, base64 content]
    form_error = None
    try:
        form = [[key, value] for key, value in request.form.items(multi=True)]
        files = [[key, f.filename, b64(f.read())] for key, f in request.files.items(multi=True)]
    except Exception as exc:  # a body Werkzeug cannot parse as a form: recorded, never a 500
        form_error = f"{type(exc).__name__}: {exc}"
    return {
        "app": "flask",
        "id": request.headers.get(TEST_ID),
        "method": request.method,
        "path": request.path,  # PATH_INFO as waitress decoded it: what Werkzeug's router matches
        "raw_target": environ.get("REQUEST_URI", ""),
        "query_string": environ.get("QUERY_STRING", ""),
        "args": [[key, value] for key, value in request.args.items(multi=True)],
        "headers": [[k, v] for k, v in request.headers.items()],
        "body": b64(body),
        "json": doc,
        "json_ok": doc is not None or body.strip() == b"null",
        "form": form,
        "files": files,
        "form_error": form_error,
        "content_type": request.content_type,
    }


@app.before_request
def record_everything() -> Any:
    record = _record()
    assert SEEN is not None
    SEEN.write(record)
    return app.response_class(json.dumps(record), mimetype="application/json")


def main() -> None:
    global SEEN
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    SEEN = SeenLog(args.log)
    waitress.serve(app, host=args.host, port=args.port, threads=8, _quiet=True, ident="flask-waitress",
                   clear_untrusted_proxy_headers=False)


if __name__ == "__main__":
    main()
