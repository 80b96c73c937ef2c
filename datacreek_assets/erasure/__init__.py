"""Erasure: a deleted document's copies, hidden at once and removed from every store at purge."""
