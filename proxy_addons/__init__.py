"""Tokenbunker proxy_addons (see shared/DESIGN.md)."""
