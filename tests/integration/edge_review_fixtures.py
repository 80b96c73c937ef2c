"""Two tenants' graphs for the edge review tests (real Neo4j), their queues in a review store, and
the curation app over them."""

from __future__ import annotations

ADMIN = "edge-review-admin-token-0001"
HOSTILE_SENTENCE = 'Vienna <script>alert("x")</script> hosts <img src=x onerror="alert(1)"> the Danube.'
CITIES = ("vienna", "linz", "passau", "budapest", "belgrade", "ulm")


def review_document(tenant: str) -> dict:
    """A river and its cities: facts from the Danube to each city, and each city to the next; the
    first fact's sentence is hostile HTML."""
    chunks, mentions, facts = [], [], []
    entities = [{"entity_id": f"{tenant}-{n}", "name": n.title(), "type": "PLACE"} for n in ("danube", *CITIES)]
    for i, city in enumerate(CITIES):
        chunk = f"{tenant}-c{i}"
        text = f"The Danube flows through {city.title()}."
        chunks.append({"chunk_id": chunk, "doc_id": "rivers.md", "props": {"doc_id": "rivers.md", "position": i,
                                                                          "text": text}})
        named = [f"{tenant}-danube", f"{tenant}-{city}"] + ([f"{tenant}-{CITIES[i - 1]}"] if i else [])
        mentions += [{"chunk_id": chunk, "entity_id": e, "count": 1} for e in named]
        facts.append({"fact_id": f"{tenant}-f{i}", "chunk_id": chunk, "doc_id": "rivers.md",
                      "subject": f"{tenant}-danube", "object": f"{tenant}-{city}", "predicate": "flows through",
                      "sentence": HOSTILE_SENTENCE if i == 0 else text})
        if i:
            facts.append({"fact_id": f"{tenant}-n{i}", "chunk_id": chunk, "doc_id": "rivers.md",
                          "subject": f"{tenant}-{CITIES[i - 1]}", "object": f"{tenant}-{city}",
                          "predicate": "precedes", "sentence": f"{CITIES[i - 1].title()} precedes {city.title()}."})
    return {"doc_id": "rivers.md", "props": {"signature": "s"}, "chunks": chunks, "next": [], "entities": entities,
            "mentions": mentions, "facts": facts}


def seed(admin, store, tenants: tuple[str, ...]) -> dict:
    """Each tenant's graph written afresh and its whole queue (τ 0) in ``store``."""
    from datacreek_assets.curation.review import refresh_queue

    graphs = {}
    for tenant in tenants:
        graph = admin.tenant(tenant)
        graph.delete_everything()
        admin.create_scope(tenant)
        graph.replace_documents([review_document(tenant)])
        refresh_queue(graph, store, tau=0.0)
        graphs[tenant] = graph
    return graphs
