"""Topological sketches of a tenant's embeddings. No Dagster here."""
