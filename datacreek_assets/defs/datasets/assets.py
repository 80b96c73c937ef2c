"""sft_dataset: instruction/answer pairs from the tenant's live graph."""

from collections import Counter

import dagster as dg

from datacreek_assets.automation import downstream_condition

from datacreek_assets.datasets.sft import curation_drops, documents_index, generate, to_jsonl
from datacreek_assets.defs.graph.assets import knowledge_graph
from datacreek_assets.defs.retrieval.assets import retrieval_dir, retrieval_index
from datacreek_assets.erasure.documents import DATASET_PREFIX, DOCUMENTS_INDEX  # the layout erasure reads
from datacreek_assets.partitions import tenant_asset
from datacreek_assets.tenancy import validate_tenant_id
from resources.stores import FineTuneResource, GraphStoreResource, ObjectStoreResource


@tenant_asset(
    automation_condition=downstream_condition(),
    group_name="datasets",
    kinds={"python", "jsonl"},
    deps=[knowledge_graph, retrieval_index],
    description="Short-answer questions from documented members, definitions, defaults, acronyms and "
    "relation facts (versioned Jinja templates), each scored for quality and answered from the passages "
    "retrieval finds for it; chat-messages and Alpaca JSONL; a new version only when the content changes.",
)
def sft_dataset(context: dg.AssetExecutionContext, graph_store: GraphStoreResource, object_store: ObjectStoreResource,
                finetune: FineTuneResource) -> dg.MaterializeResult:
    from datacreek_assets.embeddings.embedder import embed_texts
    from datacreek_assets.retrieval.index import load_current

    tenant = validate_tenant_id(context.partition_key)
    store = object_store.for_tenant(tenant)
    index = load_current(retrieval_dir(finetune, tenant), tenant)
    if index is None:
        raise dg.Failure(f"tenant {tenant} has no retrieval index yet: materialize retrieval_index first")
    with graph_store.tenant(tenant) as graph:
        chunks = graph.live_chunks()
        dataset = generate(graph.live_facts(), chunks, index, embed_texts)
        dropped = curation_drops(graph.rejected_facts(), chunks, {r.record_id for r in dataset.records})
    folder = f"{DATASET_PREFIX}/{dataset.version}"
    new_version = not store.exists(f"{folder}/manifest.json")
    manifest = {
        "version": dataset.version,
        "template_sha": dataset.template_sha,
        "records": len(dataset.records),
        "splits": dataset.split_counts(),
        "filtered": dict(dataset.filtered),
        "duplicates_removed": dataset.duplicates,
        "quality_threshold": dataset.threshold,
        "quality_scores": dataset.score_summary(),
        "templates": dict(Counter(r.template for r in dataset.records)),
        "retrieval_index": index.version,
        "source_retrieved_share": round(dataset.retrieval_hit_rate or 0.0, 3),
        "records_from_confirmed_facts": sum(r.confirmed for r in dataset.records),
        "dropped_by_curation": len(dropped),
    }
    if new_version:
        store.put(f"{folder}/chat.jsonl", to_jsonl([r.chat() for r in dataset.records]))
        store.put(f"{folder}/alpaca.jsonl", to_jsonl([r.alpaca() for r in dataset.records]))
        store.put_json(f"{folder}/{DOCUMENTS_INDEX}", documents_index(dataset.records))
        store.put_json(f"{folder}/manifest.json", manifest)  # written last: a version exists once complete
    elif not store.exists(f"{folder}/{DOCUMENTS_INDEX}"):  # a version from before the index existed
        store.put_json(f"{folder}/{DOCUMENTS_INDEX}", documents_index(dataset.records))
    store.put_json(f"{DATASET_PREFIX}/latest.json", {"version": dataset.version})
    # ids and scores, no record text: Dagster's event log is append-only, and erasure must reach every copy
    sample = "\n".join(f"| {r.record_id} | {r.template} | {r.score} | {r.split} |" for r in dataset.records[:8])
    return dg.MaterializeResult(
        metadata={
            **{k: v for k, v in manifest.items()},
            "new_version": new_version,
            "path": store.key(folder),
            "sample": dg.MetadataValue.md("| record | template | quality | split |\n|---|---|---|---|\n" + sample),
            "records_file": store.key(f"{folder}/chat.jsonl"),
            # which records curators' rejections took out, and why (ids, no record text)
            "curation_drops": dg.MetadataValue.md(
                "| record | fact | template | rejected by | reason |\n|---|---|---|---|---|\n" + "\n".join(
                    f"| {d['record']} | {d['fact']} | {d['template']} | {d['rejected_by']} | "
                    f"{_cell(d['reason'])} |" for d in dropped[:50])),
        },
        data_version=dg.DataVersion(dataset.version),
    )


def _cell(text: str | None) -> str:
    """A curator's reason as one Markdown table cell."""
    return " ".join((text or "").replace("|", "/").split())[:120]
