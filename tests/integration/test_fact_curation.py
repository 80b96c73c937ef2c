"""A curator's decisions on the real Neo4j, logged in `edge_repair_log` (SQLite): accept, reject,
edit and undo; optimistic concurrency on the fact's version; tenants that cannot reach each
other's facts or log; and curation that outlives a re-ingestion and a document's restore."""

import threading
from datetime import timedelta

import pytest

from datacreek_assets.curation.decisions import DecisionError, decide, undo
from datacreek_assets.curation.repair_log import RepairLog
from datacreek_assets.graph.fact_curation import StaleFactVersion, UnknownFact

pytestmark = pytest.mark.integration
TENANTS = ("cur-a", "cur-b")


def document(tenant: str) -> dict:
    chunk = f"{tenant}-c1"
    entities = [{"entity_id": f"{tenant}-{n}", "name": n.title(), "type": "PLACE"} for n in ("danube", "vienna", "linz")]
    facts = [{"fact_id": f"{tenant}-f{i}", "chunk_id": chunk, "doc_id": "rivers.md", "subject": f"{tenant}-danube",
              "object": f"{tenant}-{o}", "predicate": "flows through", "sentence": f"The Danube flows through {o}."}
             for i, o in enumerate(("vienna", "linz"))]
    return {"doc_id": "rivers.md", "props": {"signature": "s"},
            "chunks": [{"chunk_id": chunk, "doc_id": "rivers.md",
                        "props": {"doc_id": "rivers.md", "position": 0, "text": "The Danube flows through Vienna."}}],
            "next": [], "entities": entities,
            "mentions": [{"chunk_id": chunk, "entity_id": e["entity_id"], "count": 1} for e in entities],
            "facts": facts}


@pytest.fixture
def graphs(local_resources):
    with local_resources["graph_store"].admin() as admin:
        opened = {}
        for tenant in TENANTS:
            graph = admin.tenant(tenant)
            graph.delete_everything()
            admin.create_scope(tenant)
            graph.replace_documents([document(tenant)])
            opened[tenant] = graph
        yield opened
        for graph in opened.values():
            graph.delete_everything()


@pytest.fixture
def log(tmp_path):
    return RepairLog(f"sqlite:///{tmp_path / 'repair.db'}")


def predicates(graph) -> dict[str, str]:
    return {f["fact_id"]: f["predicate"] for f in graph.live_facts()}


def test_accept_reject_edit_and_undo_change_the_graph_and_are_logged(graphs, log):
    a = graphs["cur-a"]
    accepted = decide(a, log, "cur-a-f0", 0, "accept", "ada", delta_lambda=0.12)
    assert accepted.version == 1 and accepted.after["confirmed_by"] == "ada" and accepted.delta_lambda == 0.12
    rejected = decide(a, log, "cur-a-f1", 0, "reject", "ada", reason="Linz is not on this page")
    assert rejected.after["rejected_reason"] == "Linz is not on this page"
    assert set(predicates(a)) == {"cur-a-f0"}  # a rejected fact leaves the SFT dataset's input
    edited = decide(a, log, "cur-a-f0", 1, "edit", "bob", predicate="passes through")
    assert predicates(a) == {"cur-a-f0": "passes_through"}
    assert edited.before["predicate"] == "flows through" and edited.after["extracted_predicate"] == "flows through"

    undone = undo(a, log, rejected.id, "bob")
    assert undone.decision == "undo" and undone.undoes == rejected.id and undone.after["rejected_at"] is None
    assert set(predicates(a)) == {"cur-a-f0", "cur-a-f1"}
    assert [e.decision for e in log.entries("cur-a")] == ["undo", "edit", "reject", "accept"]
    with pytest.raises(DecisionError, match="undone already"):
        undo(a, log, rejected.id, "bob")
    with pytest.raises(StaleFactVersion, match="at version 2, not 1"):  # the edit came after the accept
        undo(a, log, accepted.id, "bob")


def test_a_second_decision_on_the_same_version_is_refused(graphs, log):
    a = graphs["cur-a"]
    outcomes: list = []

    def curate(curator: str) -> None:
        try:
            outcomes.append(decide(a, log, "cur-a-f0", 0, "reject", curator))
        except StaleFactVersion as err:
            outcomes.append(err)

    threads = [threading.Thread(target=curate, args=(name,)) for name in ("ada", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(type(o).__name__ for o in outcomes) == ["RepairEntry", "StaleFactVersion"]
    assert a.fact_state("cur-a-f0")["version"] == 1 and len(log.entries("cur-a")) == 1


def test_a_tenant_cannot_decide_on_or_undo_another_tenant_s_facts(graphs, log):
    a, b = graphs["cur-a"], graphs["cur-b"]
    entry = decide(a, log, "cur-a-f0", 0, "reject", "ada")
    with pytest.raises(UnknownFact):
        decide(b, log, "cur-a-f0", 1, "accept", "mallory")
    with pytest.raises(DecisionError, match="no decision"):
        undo(b, log, entry.id, "mallory")
    assert log.entries("cur-b") == [] and a.fact_state("cur-a-f0")["rejected_by"] == "ada"


@pytest.mark.parametrize("kwargs, match", [
    ({"decision": "edit", "predicate": "<script>alert(1)</script>"}, "a predicate is"),
    ({"decision": "edit", "predicate": " "}, "a predicate is"),
    ({"decision": "edit", "predicate": "x" * 81}, "a predicate is"),
    ({"decision": "delete"}, "accept, reject or edit"),
    ({"decision": "accept", "curator": "ada; DROP TABLE"}, "a curator is"),
])
def test_malformed_decisions_are_refused_and_change_nothing(graphs, log, kwargs, match):
    a = graphs["cur-a"]
    with pytest.raises(DecisionError, match=match):
        decide(a, log, "cur-a-f0", 0, kwargs.pop("decision"), kwargs.pop("curator", "ada"), **kwargs)
    assert a.fact_state("cur-a-f0")["version"] == 0 and log.entries("cur-a") == []


def test_a_graph_change_the_log_cannot_hold_is_reverted(graphs, log):
    a = graphs["cur-a"]
    with log.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE edge_repair_log")  # the log's store fails the write
    with pytest.raises(Exception, match="edge_repair_log"):
        decide(a, log, "cur-a-f1", 0, "reject", "ada")
    assert a.fact_state("cur-a-f1")["rejected_at"] is None and "cur-a-f1" in predicates(a)
    # a decision on a proposed edge made it a fact: reverted, that fact is gone again
    proposal = {"subject_id": "cur-a-vienna", "object_id": "cur-a-linz", "chunk_id": "cur-a-c1", "doc_id": "rivers.md",
                "sentence": "The Danube flows through Vienna.", "predicate": "co-occurs with"}
    with pytest.raises(Exception, match="edge_repair_log"):
        decide(a, log, "co-vienna-linz", 0, "accept", "ada", proposal=proposal)
    assert a.fact_state("co-vienna-linz") is None and "co-vienna-linz" not in predicates(a)


def test_curation_outlives_a_re_ingestion_and_a_document_s_restore(graphs, log):
    a = graphs["cur-a"]
    decide(a, log, "cur-a-f0", 0, "edit", "ada", predicate="passes through")
    decide(a, log, "cur-a-f1", 0, "reject", "ada")
    a.replace_documents([document("cur-a")])  # extracted again: the same facts, the extractor's predicate
    assert predicates(a) == {"cur-a-f0": "passes_through"}
    a.soft_delete_documents(["rivers.md"], by="test")
    assert a.restore_document("rivers.md", max_age=timedelta(days=1))
    assert predicates(a) == {"cur-a-f0": "passes_through"}  # the restore does not bring the rejected fact back
    assert a.fact_state("cur-a-f1")["rejected_by"] == "ada"
