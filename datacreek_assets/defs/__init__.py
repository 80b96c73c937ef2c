"""Dagster wiring: thin assets over the domain modules, grouped by concept."""

from __future__ import annotations

import dagster as dg

from datacreek_assets.settings import LocalSettings, current_profile


def build_definitions(profile: str | None = None, settings: LocalSettings | None = None) -> dg.Definitions:
    """Build the code location. Reads the environment now (definition-build time), not at import."""
    from datacreek_assets.defs.datasets import definitions as dataset_defs
    from datacreek_assets.defs.embeddings import definitions as embedding_defs
    from datacreek_assets.defs.graph import definitions as graph_defs
    from datacreek_assets.defs.ingest import definitions as ingest_defs
    from datacreek_assets.defs.tenants import definitions as tenant_defs
    from datacreek_assets.defs.topology import definitions as topology_defs
    from resources.factory import build_resources

    profile = profile or current_profile()
    return dg.Definitions.merge(
        ingest_defs(),
        graph_defs(),
        dataset_defs(),
        embedding_defs(),
        topology_defs(),
        tenant_defs(),
        dg.Definitions(resources=build_resources(profile, settings)),
    )
