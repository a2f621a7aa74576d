"""API: legal bases, processing activities and agreements beyond the basics (/v1/lbasis, /v1/pactivity,
/v1/agreements). A thin layer over the vault (see vault/web.py).
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("consent", __name__, url_prefix="/v1")
