"""Ingest: parse a tenant's inbox, chunk, screen. No Dagster here."""
