"""Dagster wiring: thin assets over the domain modules, grouped by concept."""

from __future__ import annotations

import dagster as dg

from datacreek_assets.settings import LocalSettings, current_profile


def build_definitions(profile: str | None = None, settings: LocalSettings | None = None) -> dg.Definitions:
    """Build the code location. Reads the environment now (definition-build time), not at import."""
    from datacreek_assets.quiet import quiet_third_party

    # every process that loads the code location (code server, run and step workers): first
    quiet_third_party()
    from datacreek_assets.defs.billing import definitions as billing_defs
    from datacreek_assets.defs.curation import definitions as curation_defs
    from datacreek_assets.defs.datasets import definitions as dataset_defs
    from datacreek_assets.defs.embeddings import definitions as embedding_defs
    from datacreek_assets.defs.finetune import definitions as finetune_defs
    from datacreek_assets.defs.graph import definitions as graph_defs
    from datacreek_assets.defs.ingest import definitions as ingest_defs
    from datacreek_assets.defs.retention import definitions as retention_defs
    from datacreek_assets.defs.retraining import definitions as retraining_defs
    from datacreek_assets.defs.retrieval import definitions as retrieval_defs
    from datacreek_assets.defs.serving import definitions as serving_defs
    from datacreek_assets.defs.streaming import definitions as streaming_defs
    from datacreek_assets.defs.tenants import definitions as tenant_defs
    from datacreek_assets.defs.topology import definitions as topology_defs
    from resources.factory import build_resources

    profile = profile or current_profile()
    return dg.Definitions.merge(
        ingest_defs(),
        graph_defs(),
        curation_defs(),
        dataset_defs(),
        embedding_defs(),
        retrieval_defs(),
        finetune_defs(),
        serving_defs(),
        streaming_defs(),
        topology_defs(),
        tenant_defs(),
        retraining_defs(),
        retention_defs(),
        billing_defs(),
        dg.Definitions(resources=build_resources(profile, settings), executor=executor_for(profile)),
    )


def executor_for(profile: str) -> dg.ExecutorDefinition:
    """Locally, a tenant's steps run inside its run's process.

    A run is already one process per tenant (the isolation unit); the default multiprocess
    executor adds a subprocess per step that re-imports the code location (~2 s each on these
    machines) and buys nothing when a run's steps depend on each other. In prod (Kubernetes) each
    step runs in its own pod, in the tenant's namespace; GPU steps carry their pod spec in
    `GPU_OP_TAGS` (automation.py).
    """
    if profile == "local":
        return dg.in_process_executor
    from datacreek_assets.k8s_launcher import tenant_k8s_job_executor

    return tenant_k8s_job_executor
