"""Supervised fine-tuning datasets generated from a tenant's graph. No Dagster here."""
