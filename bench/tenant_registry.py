"""Onboarding many tenants into the registry: one transaction vs one per tenant."""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.harness import Comparison
from datacreek_assets.tenant_registry import TenantRegistry


def comparisons(quick: bool = False) -> list[Comparison]:
    folder = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    registry = TenantRegistry(f"sqlite:///{folder / 'registry.db'}")
    ids = [f"tenant-{i:03d}" for i in range(50 if quick else 200)]

    def reset() -> None:
        for t in registry.list():
            registry.remove(t.tenant_id)

    def batched() -> int:
        return registry.add_many(ids)

    def one_by_one() -> int:
        return sum(registry.add(t) for t in ids)

    return [Comparison(
        name=f"registry: add_many vs add per tenant ({len(ids)})",
        candidate=batched, baseline=one_by_one, unit="tenants", repeats=1 if quick else 3, setup=reset,
        notes="SQLite registry under a temporary directory",
    )]
