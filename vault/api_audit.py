"""API: the audit trail, backup and metrics (/v1/audit, /v1/sys/backup, /v1/metrics). A thin layer over the vault (see
vault/web.py).
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("audit", __name__, url_prefix="/v1")
