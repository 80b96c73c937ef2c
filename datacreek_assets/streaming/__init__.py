"""The real-time path: graph events in Kafka, keyed by tenant. No Dagster here."""
