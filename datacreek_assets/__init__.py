"""Datacreek: per-tenant documents -> knowledge graph -> fine-tuned, served model.

Domain code lives in plain modules here; Dagster wiring lives under ``defs/``.
"""
