"""Prometheus metrics the platform exports."""

from __future__ import annotations

import weakref

from prometheus_client import REGISTRY, CollectorRegistry, Counter


class FeatureCacheMetrics:
    """``feature_cache_hits_total{tenant}`` and ``feature_cache_misses_total{tenant}``."""

    # keyed by the registry object itself (weakly): id()s are reused once a registry is collected
    _shared: "weakref.WeakKeyDictionary[CollectorRegistry, FeatureCacheMetrics]" = weakref.WeakKeyDictionary()

    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self.hits = Counter("feature_cache_hits", "Feature lookups served from the lookup cache", ["tenant"], registry=registry)
        self.misses = Counter("feature_cache_misses", "Feature lookups that went to the online store", ["tenant"], registry=registry)

    @classmethod
    def for_registry(cls, registry: CollectorRegistry = REGISTRY) -> "FeatureCacheMetrics":
        # a collector can be registered once per registry
        if registry not in cls._shared:
            cls._shared[registry] = cls(registry)
        return cls._shared[registry]
