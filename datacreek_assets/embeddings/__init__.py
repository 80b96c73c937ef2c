"""Chunk embeddings, fp8 vectors and the Feast feature store. No Dagster here."""
