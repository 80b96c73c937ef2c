"""Retrieval: a tenant's chunks found by their vectors, and the grounded prompt they go into."""
