"""The knowledge_graph asset: chunks -> Neo4j (documents, chunks, entities, fact hyperedges)."""


from collections import defaultdict

import dagster as dg

from datacreek_assets.automation import downstream_condition

from datacreek_assets.defs.ingest.assets import CHUNKS_KEY, DOCUMENTS_KEY, QUARANTINE_KEY, parsed_chunks
from datacreek_assets.graph.extraction import measure_precision
from datacreek_assets.graph.sync import sync_documents
from datacreek_assets.partitions import tenant_asset
from datacreek_assets.pictures import bipartite_picture, png_markdown
from datacreek_assets.tenancy import validate_tenant_id
from resources.stores import EventLogResource, GraphStoreResource, ObjectStoreResource


@tenant_asset(
    automation_condition=downstream_condition(),
    group_name="graph",
    kinds={"neo4j", "kafka"},
    deps=[parsed_chunks],
    description="Tenant-scoped knowledge graph in Neo4j, written incrementally: unchanged documents are "
    "skipped, changed ones replaced, removed ones soft-deleted; each change is published as graph events "
    "(Kafka, keyed by tenant) for the real-time path.",
)
def knowledge_graph(context: dg.AssetExecutionContext, graph_store: GraphStoreResource,
                    object_store: ObjectStoreResource, event_log: EventLogResource) -> dg.MaterializeResult:
    from datacreek_assets.streaming.events import graph_events

    tenant = validate_tenant_id(context.partition_key)
    store = object_store.for_tenant(tenant)
    documents = [{k: d[k] for k in ("doc_id", "content_hash", "format", "size_bytes")} for d in store.get_jsonl(DOCUMENTS_KEY)]
    chunks_by_doc: dict[str, list[dict]] = defaultdict(list)
    for chunk in store.get_jsonl(CHUNKS_KEY):
        chunks_by_doc[chunk["doc_id"]].append(chunk)
    quarantined = store.get_json(QUARANTINE_KEY)
    with graph_store.tenant(tenant) as graph:
        report = sync_documents(graph, documents, chunks_by_doc)
        events = graph_events(graph, report.written, report.soft_deleted)
        counts = graph.counts()
        biggest = max(documents, key=lambda d: len(chunks_by_doc.get(d["doc_id"], [])), default=None)
        edges = []
        if biggest:
            edges = [(f"chunk {r['chunk']}", r["entity"]) for r in graph.document_subgraph(biggest["doc_id"], 40) if r["entity"]]
    metadata = {
        "documents_written": len(report.written),
        "documents_unchanged": len(report.unchanged),
        "documents_soft_deleted": len(report.soft_deleted),
        "documents_held_deleted_by_operator": len(report.held_by_operator),
        "writes": dict(report.counters),
        "nodes": counts.nodes,
        "relationships": counts.relationships,
        "quarantined_documents": [q["doc_id"] + ": " + q["reason"] for q in quarantined],
        "extraction_precision_sample": measure_precision(),
        **publish_events(context, event_log, tenant, events),
    }
    if edges:
        png = bipartite_picture(edges, f"{tenant}: {biggest['doc_id']} (chunks -> entities)")
        store.put("reports/knowledge_graph.png", png)
        metadata["graph_picture"] = dg.MetadataValue.md(png_markdown(png, "knowledge graph sample"))
    return dg.MaterializeResult(metadata=metadata)


def publish_events(context: dg.AssetExecutionContext, event_log: EventLogResource, tenant: str, events: list) -> dict:
    """The graph is written (Neo4j is the truth): an event log that cannot take the events is
    logged with the way to catch up, and the hot layer lags until then."""
    from datacreek_assets.streaming.events import EventLogError

    log = event_log.event_log()
    try:
        return {"events_published": log.publish(events)}
    except EventLogError as err:
        context.log.error(f"{tenant}: {len(events)} graph events not published ({err}); "
                          f"catch up with `datacreek events replay --tenant {tenant}`")
        return {"events_published": 0, "events_not_published": len(events)}
    finally:
        log.close()
