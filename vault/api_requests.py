"""API: DPO requests and retention (/v1/request(s), /v1/exp). A thin layer over the vault (see vault/web.py).
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("requests", __name__, url_prefix="/v1")
