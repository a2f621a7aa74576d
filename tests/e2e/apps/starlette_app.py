"""A Starlette app under uvicorn that routes every path and records what it parsed (see seenlog.py).

    python tests/e2e/apps/starlette_app.py --port 8080 --log seen.jsonl

One catch-all route (`/{rest:path}`) for every method. The form is read with request.form(), that is
python-multipart for both multipart/form-data and application/x-www-form-urlencoded bodies; JSON with
json.loads(await request.body()), as a Starlette view would. It answers 200 with the JSON of its record.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvicorn  # noqa: E402
from seenlog import TEST_ID, SeenLog, b64  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.datastructures import UploadFile  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
SEEN: SeenLog | None = None


async def record_everything(request: Request) -> Response:
    body = await request.body()  # read first: request.form() then parses this cached body
    doc: Any = None
    json_ok = False
    try:
        doc = json.loads(body)
        json_ok = True
    except Exception:
        pass
    form: list[list[Any]] = []  # [name, value] pairs in order: a name may repeat
    files: list[list[Any]] = []  # [name, filename, base64 content]
    form_error = None
    try:
        parsed = await request.form(max_files=10000, max_fields=10000)
        for key, value in parsed.multi_items():
            if isinstance(value, UploadFile):
                files.append([key, value.filename, b64(await value.read())])
            else:
                form.append([key, value])
    except Exception as exc:  # a body python-multipart cannot parse: recorded, never a 500
        form_error = f"{type(exc).__name__}: {exc}"
    scope = request.scope
    record = {
        "app": "starlette",
        "id": request.headers.get(TEST_ID),
        "method": request.method,
        "path": scope["path"],  # the decoded path uvicorn hands to the router (request.url.path)
        "url_path": request.url.path,
        "raw_target": scope.get("raw_path", b"").decode("latin-1"),
        "query_string": scope.get("query_string", b"").decode("latin-1"),
        "args": [[key, value] for key, value in request.query_params.multi_items()],
        "headers": [[k, v] for k, v in request.headers.items()],
        "body": b64(body),
        "json": doc,
        "json_ok": json_ok,
        "form": form,
        "files": files,
        "form_error": form_error,
        "content_type": request.headers.get("content-type"),
    }
    assert SEEN is not None
    SEEN.write(record)
    # json.dumps, not JSONResponse: a body with NaN (which json.loads accepts) must not make the answer a 500.
    return Response(json.dumps(record), media_type="application/json")


app = Starlette(routes=[Route("/{rest:path}", record_everything, methods=METHODS)])


def main() -> None:
    global SEEN
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    SEEN = SeenLog(args.log)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
