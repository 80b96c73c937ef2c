"""Chunk embeddings, fp8 vectors and the Feast feature store. No Dagster here."""

VECTORS_KEY = "embeddings/vectors.parquet"  # chunk_embeddings' output: one row per live chunk
