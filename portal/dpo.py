"""The DPO console: open requests with a before/after view, approve or cancel with a reason; purposes (legal
bases) and processing activities; the audit trail by person."""

from __future__ import annotations
