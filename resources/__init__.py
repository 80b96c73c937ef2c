"""Dagster resources: configuration of the stores, and the local-vs-prod factory."""

from resources.stores import (
    FeatureStoreResource,
    GraphStoreResource,
    HotGraphResource,
    ObjectStoreResource,
    TenantRegistryResource,
)
from resources.factory import build_resources

__all__ = [
    "FeatureStoreResource",
    "GraphStoreResource",
    "HotGraphResource",
    "ObjectStoreResource",
    "TenantRegistryResource",
    "build_resources",
]
