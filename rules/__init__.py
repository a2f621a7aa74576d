"""Tokenbunker rules (see shared/DESIGN.md)."""
