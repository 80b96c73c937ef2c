"""Knowledge graph: extraction and incremental sync. No Dagster here."""
