"""API: app records, sessions and shared records (/v1/userapp, /v1/session(s), /v1/sharedrecord, /v1/get, POST
/v1/users). A thin layer over the vault (see vault/web.py).
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("records", __name__, url_prefix="/v1")
