"""sft_dataset: instruction/answer pairs from the tenant's live graph."""

import dagster as dg

from datacreek_assets.automation import downstream_condition

from datacreek_assets.datasets.sft import generate, to_jsonl
from datacreek_assets.defs.graph.assets import knowledge_graph
from datacreek_assets.partitions import tenant_asset
from datacreek_assets.tenancy import validate_tenant_id
from resources.stores import GraphStoreResource, ObjectStoreResource

DATASET_PREFIX = "datasets/sft"


@tenant_asset(
    automation_condition=downstream_condition(),
    group_name="datasets",
    kinds={"python", "jsonl"},
    deps=[knowledge_graph],
    description="SFT pairs from facts and chunks via versioned Jinja templates, as chat-messages and "
    "Alpaca JSONL; a new version only when the content changes.",
)
def sft_dataset(context: dg.AssetExecutionContext, graph_store: GraphStoreResource, object_store: ObjectStoreResource) -> dg.MaterializeResult:
    tenant = validate_tenant_id(context.partition_key)
    store = object_store.for_tenant(tenant)
    with graph_store.tenant(tenant) as graph:
        dataset = generate(graph.live_facts(), graph.live_chunks())
    folder = f"{DATASET_PREFIX}/{dataset.version}"
    new_version = not store.exists(f"{folder}/manifest.json")
    manifest = {
        "version": dataset.version,
        "template_sha": dataset.template_sha,
        "records": len(dataset.records),
        "splits": dataset.split_counts(),
        "filtered": dict(dataset.filtered),
        "duplicates_removed": dataset.duplicates,
    }
    if new_version:
        store.put(f"{folder}/chat.jsonl", to_jsonl([r.chat() for r in dataset.records]))
        store.put(f"{folder}/alpaca.jsonl", to_jsonl([r.alpaca() for r in dataset.records]))
        store.put_json(f"{folder}/manifest.json", manifest)  # written last: a version exists once complete
    store.put_json(f"{DATASET_PREFIX}/latest.json", {"version": dataset.version})
    sample = "\n".join(
        f"| {r.template} | {r.instruction[:80]} | {r.output[:80]} | {r.split} |" for r in dataset.records[:6]
    )
    return dg.MaterializeResult(
        metadata={
            **{k: v for k, v in manifest.items()},
            "new_version": new_version,
            "path": store.key(folder),
            "sample": dg.MetadataValue.md("| template | instruction | answer | split |\n|---|---|---|---|\n" + sample),
        },
        data_version=dg.DataVersion(dataset.version),
    )
