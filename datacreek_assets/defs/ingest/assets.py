"""Ingest assets: the tenant's inbox -> parsed documents -> screened, de-duplicated chunks."""


from collections import Counter

import dagster as dg

from datacreek_assets.automation import downstream_condition

from datacreek_assets.ingest.chunking import chunk_text, drop_exact_duplicates
from datacreek_assets.ingest.parsing import DEFAULT_MAX_BYTES, ParsedDocument, Quarantined, parse_document
from datacreek_assets.object_store import InvalidObjectKey
from datacreek_assets.ingest.screening import screen_text
from datacreek_assets.partitions import tenant_asset
from datacreek_assets.tenancy import validate_tenant_id
from resources.stores import ObjectStoreResource, TenantRegistryResource

INBOX = "inbox"
DOCUMENTS_KEY = "parsed/documents.jsonl"
QUARANTINE_KEY = "parsed/quarantine.json"
CHUNKS_KEY = "chunks/chunks.jsonl"


class IngestConfig(dg.Config):
    max_document_bytes: int = DEFAULT_MAX_BYTES


class ChunkingConfig(dg.Config):
    max_tokens: int = 200
    overlap_tokens: int = 32


@tenant_asset(
    group_name="ingest",
    kinds={"python"},
    description="Every file in tenants/<id>/inbox/ parsed to text (txt, md, html, pdf); "
    "unparseable files are quarantined with a reason.",
)
def raw_documents(
    context: dg.AssetExecutionContext, config: IngestConfig, object_store: ObjectStoreResource,
    tenant_registry: TenantRegistryResource,
) -> dg.MaterializeResult:
    tenant = validate_tenant_id(context.partition_key)
    registry = tenant_registry.registry()
    try:
        if registry.get(tenant) is None:  # a partition added by hand in the UI skips onboarding
            raise dg.Failure(f"tenant {tenant!r} is not onboarded: run `datacreek tenant add {tenant}` first")
    finally:
        registry.close()
    store = object_store.for_tenant(tenant)
    parsed, quarantined = [], []
    for key in store.list(INBOX):
        doc_id = key.removeprefix(INBOX + "/")
        try:
            size = store.size(key)  # checked before reading: a huge file is never loaded
            data = store.get(key) if size <= config.max_document_bytes else b""
        except InvalidObjectKey as err:  # e.g. an S3 "folder" marker or a key with '..'
            result = Quarantined(doc_id, f"invalid object key: {err}", 0)
        else:
            result = (parse_document(doc_id, data, config.max_document_bytes) if size <= config.max_document_bytes
                      else Quarantined(doc_id, f"oversized: {size} bytes > limit {config.max_document_bytes}", size))
        if isinstance(result, ParsedDocument):
            parsed.append(result)
        else:
            quarantined.append(result)
            context.log.warning(f"quarantined {doc_id}: {result.reason}")
    store.put_jsonl(DOCUMENTS_KEY, [doc.__dict__ for doc in parsed])
    store.put_json(QUARANTINE_KEY, [q.__dict__ for q in quarantined])
    table = "\n".join(f"| {q.doc_id} | {q.reason} |" for q in quarantined) or "| (none) | |"
    return dg.MaterializeResult(
        metadata={
            "documents": len(parsed),
            "quarantined": len(quarantined),
            "bytes": sum(d.size_bytes for d in parsed),
            "formats": dict(Counter(d.format for d in parsed)),
            "quarantined_documents": dg.MetadataValue.md("| document | reason |\n|---|---|\n" + table),
        }
    )


@tenant_asset(
    automation_condition=downstream_condition(),
    group_name="ingest",
    kinds={"python"},
    deps=[raw_documents],
    description="Token-aware, overlapping chunks (MiniLM WordPiece tokens), exact duplicates removed, "
    "PII/toxic chunks moved to ingest-toxic/<id>/.",
)
def parsed_chunks(context: dg.AssetExecutionContext, config: ChunkingConfig, object_store: ObjectStoreResource) -> dg.MaterializeResult:
    tenant = validate_tenant_id(context.partition_key)
    store = object_store.for_tenant(tenant)
    documents = store.get_jsonl(DOCUMENTS_KEY)
    all_chunks = []
    for doc in documents:
        all_chunks.extend(chunk_text(doc["doc_id"], doc["text"], config.max_tokens, config.overlap_tokens))
    unique, duplicates = drop_exact_duplicates(all_chunks)
    kept, flagged = [], Counter()
    for chunk in unique:
        reasons = screen_text(chunk.text)
        if reasons:
            flagged.update(reasons)
            store.put_json(
                f"{chunk.doc_id}/{chunk.chunk_id}.json",
                {"doc_id": chunk.doc_id, "position": chunk.position, "reasons": reasons, "text": chunk.text},
                area="toxic",
            )
        else:
            kept.append(chunk)
    rows = [
        {"chunk_id": c.chunk_id, "doc_id": c.doc_id, "position": c.position, "text": c.text, "n_tokens": c.n_tokens}
        for c in kept
    ]
    store.put_jsonl(CHUNKS_KEY, rows)
    tokens = sorted(c.n_tokens for c in kept)
    return dg.MaterializeResult(
        metadata={
            "chunks": len(kept),
            "duplicates_removed": duplicates,
            "flagged_chunks": sum(1 for c in unique) - len(kept),
            "flag_reasons": dict(flagged),
            "tokens_total": sum(tokens),
            "tokens_p50": tokens[len(tokens) // 2] if tokens else 0,
            "tokens_max": tokens[-1] if tokens else 0,
        }
    )
