"""Serving: per-tenant model versions on Ray Serve behind an authenticating router, 5 % canaries
that are promoted or rolled back by the canary health sensor."""
