"""Retention: how long stored data lives (S3 lifecycle rules, the audit that enforces them)."""
