"""Tokenbunker portal (see shared/DESIGN.md)."""
