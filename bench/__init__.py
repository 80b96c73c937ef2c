"""Benchmarks: each compares a candidate with its baseline side by side in one process."""
