"""The curation SQL stores on SQLite and on a real PostgreSQL: the review queue replaced whole,
paged and filtered per tenant, curator keys, τ, and `edge_repair_log` with its sensor's reads,
each scoped to its tenant and forgotten with it."""

from datetime import datetime, timezone

import pytest

from datacreek_assets.curation.queue import QueueItem
from datacreek_assets.curation.repair_log import RepairLog
from datacreek_assets.curation.review_store import ReviewStore
from datacreek_assets.tenancy import InvalidTenantId

pytestmark = pytest.mark.integration


def item(fact_id: str, score: float, predicate: str = "returns", proposed: bool = False) -> QueueItem:
    return QueueItem(fact_id, "Parser", predicate, "Tree", f"Parser {predicate} Tree.", "doc.md", "c1", 0,
                     (score, 0.0), score, True, True, "", 0.9, ("structural",), "parser", "tree", proposed)


def test_the_queue_is_replaced_whole_paged_filtered_and_scoped(sql_url):
    store = ReviewStore(sql_url)
    store.replace_queue("acme", "v1", [item(f"f{i}", 1.0 / (i + 1)) for i in range(30)], {"c1": "text"}, {})
    store.replace_queue("globex", "v1", [item("g1", 0.5)], {}, {})
    page = store.page("acme", offset=25, limit=10)
    assert page.total == 30 and [e.fact_id for e in page.edges] == [f"f{i}" for i in range(25, 30)]
    assert store.page("acme", min_delta=0.5).total == 2 and store.page("acme", text="PARSER").total == 30
    assert store.edge("acme", "g1") is None and store.edge("globex", "g1").chunk_text == ""
    store.mark("acme", "f0", "edit", 1, predicate="parses")
    assert store.page("acme", status="open").total == 29 and store.page("acme", status="decided").total == 1
    edited = store.edge("acme", "f0")
    assert (edited.predicate, edited.current_version, edited.decision) == ("parses", 1, "edit")
    assert store.predicates("acme") == ["parses", "returns"]
    store.replace_queue("acme", "v2", [item("f9", 0.2, proposed=True)], {}, {})  # a new queue replaces all
    assert [e.fact_id for e in store.page("acme", status="all").edges] == ["f9"]
    assert store.edge("acme", "f9").proposal()["subject_id"] == "parser"
    assert store.forget_documents("acme", ["doc.md"]) == 1 and store.page("acme", status="all").total == 0
    with pytest.raises(InvalidTenantId):
        store.page("../globex")


def test_curator_keys_and_tau_are_per_tenant(sql_url):
    store = ReviewStore(sql_url)
    key_id, key = store.issue_key("acme", "ada")
    assert store.curator_for_key(key) == ("acme", "ada") and store.curator_for_key(key + "x") is None
    assert store.curator_for_key("dck_" + key[4:]) is None  # a serving key's prefix is not a curator key's
    assert not store.revoke_key("globex", key_id) and store.curator_for_key(key) == ("acme", "ada")
    store.set_tau("acme", 0.01)
    assert store.tau("acme", 1e-4) == 0.01 and store.tau("globex", 1e-4) == 1e-4
    with pytest.raises(ValueError):
        store.set_tau("acme", -1.0)
    store.forget_tenant("acme")
    assert store.curator_for_key(key) is None and store.tau("acme", 1e-4) == 1e-4


def test_the_repair_log_is_scoped_and_read_in_order_by_the_sensor(sql_url):
    log = RepairLog(sql_url)
    at = datetime.now(timezone.utc)
    ids = []
    for tenant, edge in (("acme", "f1"), ("globex", "g1"), ("acme", "f2")):
        with log.session() as session:
            ids.append(log.add(session, tenant, edge, "ada", "accept", {"v": 0}, {"v": 1}, 0.1, 1, at).id)
            session.commit()
    assert log.decisions_after(0) == [(ids[0], "acme"), (ids[1], "globex"), (ids[2], "acme")]
    assert log.decisions_after(ids[1]) == [(ids[2], "acme")]
    assert [e.edge_id for e in log.entries("acme")] == ["f2", "f1"] and log.entry("acme", ids[1]) is None
    with log.session() as session:
        log.add(session, "acme", "f1", "bob", "undo", {"v": 1}, {"v": 0}, 0.1, 2, at, undoes=ids[0])
        session.commit()
    assert log.undone("acme", ids[0]) and not log.undone("globex", ids[0])
    assert log.forget_tenant("acme") == 3 and log.entries("acme") == [] and len(log.entries("globex")) == 1
