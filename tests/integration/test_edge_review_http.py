"""The edge review's HTTP API and page on the real Neo4j and Kafka (SQLite review store and
repair log): keys and tenants, hostile ids and bodies, two curators on one edge, undo, escaped
evidence, and the hot layer told of each decision."""

import json

import pytest
from fastapi.testclient import TestClient

from datacreek_assets.curation.repair_log import RepairLog
from datacreek_assets.curation.review_store import ReviewStore
from datacreek_assets.curation.web import curation_app
from tests.integration.edge_review_fixtures import ADMIN, seed

pytestmark = pytest.mark.integration
TENANTS = ("rev-a", "rev-b")


@pytest.fixture
def stores(tmp_path):
    url = f"sqlite:///{tmp_path / 'curation.db'}"
    return ReviewStore(url), RepairLog(url)


@pytest.fixture
def graphs(local_resources, stores):
    with local_resources["graph_store"].admin() as admin:
        opened = seed(admin, stores[0], TENANTS)
        yield admin, opened
        for graph in opened.values():
            graph.delete_everything()


@pytest.fixture
def event_log(local_resources):
    log = local_resources["event_log"].event_log()  # the platform's: it signs
    log.ensure_topics()
    yield log
    log.close()


@pytest.fixture
def client(graphs, stores, event_log):
    return TestClient(curation_app(graphs[0], stores[0], stores[1], ADMIN, event_log.publish))


@pytest.fixture
def keys(stores):
    return {"a": stores[0].issue_key("rev-a", "ada")[1], "a2": stores[0].issue_key("rev-a", "bob")[1],
            "b": stores[0].issue_key("rev-b", "cy")[1]}


def bearer(key: str, **extra: str) -> dict:
    return {"Authorization": f"Bearer {key}", **extra}


def test_keys_name_the_tenant_and_no_curator_reaches_another_tenant(client, keys, graphs, hostile):
    with hostile.case("http"):
        assert client.get("/api/v1/edges").status_code == 401
    with hostile.case("http"):
        assert client.get("/api/v1/edges", headers=bearer("dcc_" + "x" * 43)).status_code == 401
    with hostile.case("http"):
        assert client.get("/api/v1/edges", headers=bearer(keys["a"], **{"X-Tenant": "rev-b"})).status_code == 403
    with hostile.case("http"):
        assert client.get("/api/v1/edges", headers=bearer(ADMIN)).status_code == 400  # the admin names a tenant
    mine = client.get("/api/v1/edges?limit=100", headers=bearer(keys["a"])).json()
    assert mine["total"] == 11 and all(e["id"].startswith("rev-a-") for e in mine["edges"])
    as_admin = client.get("/api/v1/edges?limit=100", headers=bearer(ADMIN, **{"X-Tenant": "rev-b"})).json()
    assert {e["id"] for e in as_admin["edges"]} == {e["id"].replace("rev-a", "rev-b") for e in mine["edges"]}
    theirs = as_admin["edges"][0]
    for method, path, body in (("GET", f"/api/v1/edges/{theirs['id']}", None),
                               ("PATCH", f"/api/v1/edges/{theirs['id']}", {"version": 0, "decision": "reject"})):
        with hostile.case("http"):
            answer = client.request(method, path, headers=bearer(keys["a"]), json=body)
            assert answer.status_code == 404, answer.text
    assert graphs[1]["rev-b"].fact_state(theirs["id"])["version"] == 0  # untouched
    # B's log is not A's either
    decided = client.patch(f"/api/v1/edges/{theirs['id']}", headers=bearer(keys["b"]),
                           json={"version": 0, "decision": "accept"}).json()
    assert client.get("/api/v1/repairs", headers=bearer(keys["a"])).json() == {"entries": []}
    with hostile.case("http"):
        assert client.post(f"/api/v1/repairs/{decided['id']}/undo", headers=bearer(keys["a"])).status_code == 404
    assert graphs[1]["rev-b"].fact_state(theirs["id"])["confirmed_by"] == "cy"


@pytest.mark.parametrize("edge_id", ["..%2F..%2Fetc", "x" * 200, "a b", "<script>", "f%00"])
def test_malformed_edge_ids_are_refused(client, keys, edge_id, hostile):
    with hostile.case("http"):
        answer = client.patch(f"/api/v1/edges/{edge_id}", headers=bearer(keys["a"]),
                              json={"version": 0, "decision": "accept"})
        assert answer.status_code in (400, 404) and answer.json()["error"]["type"] in ("invalid_edge_id", "not_found")


def test_unknown_edges_and_malformed_decisions_are_clear_errors_that_change_nothing(client, keys, graphs, stores,
                                                                                      hostile):
    cases = [("rev-a-nope", {"version": 0, "decision": "accept"}, 404),
             ("rev-a-f1", {"version": -1, "decision": "accept"}, 422),
             ("rev-a-f1", {"version": 0, "decision": "delete"}, 422),
             ("rev-a-f1", {"version": 0, "decision": "accept", "as": "admin"}, 422),
             ("rev-a-f1", {"version": 0, "decision": "edit", "predicate": "<b>bold</b>"}, 422),
             ("rev-a-f1", {"version": 0, "decision": "edit"}, 422),
             ("rev-a-f1", "not json", 422),
             ("rev-a-f1", {"version": 0, "decision": "reject", "reason": "x" * 20_000}, 413)]
    for edge_id, body, status in cases:
        with hostile.case("http"):
            content = body if isinstance(body, str) else json.dumps(body)
            answer = client.patch(f"/api/v1/edges/{edge_id}", headers=bearer(keys["a"]), content=content)
            assert answer.status_code == status, (body, answer.text)
            assert answer.json()["error"]["message"]
    assert graphs[1]["rev-a"].fact_state("rev-a-f1")["version"] == 0
    assert stores[1].entries("rev-a") == []


def test_the_second_curator_on_an_edge_gets_409_and_undo_restores(client, keys, graphs, stores):
    first = client.patch("/api/v1/edges/rev-a-f2", headers=bearer(keys["a"]), json={"version": 0, "decision": "accept"})
    assert first.status_code == 200 and first.json()["curator"] == "ada" and first.json()["version"] == 1
    assert first.json()["delta_lambda"] > 0  # the queued Δλ, logged
    second = client.patch("/api/v1/edges/rev-a-f2", headers=bearer(keys["a2"]),
                          json={"version": 0, "decision": "reject"})
    assert second.status_code == 409 and second.headers["X-Current-Version"] == "1"
    graph = graphs[1]["rev-a"]
    assert graph.fact_state("rev-a-f2")["confirmed_by"] == "ada" and graph.fact_state("rev-a-f2")["rejected_at"] is None
    # bob reloads and decides at the current version: an edit
    edited = client.patch("/api/v1/edges/rev-a-f2", headers=bearer(keys["a2"]),
                          json={"version": 1, "decision": "edit", "predicate": "passes through"})
    assert edited.status_code == 200 and graph.fact_state("rev-a-f2")["predicate"] == "passes_through"
    log = client.get("/api/v1/repairs", headers=bearer(keys["a"])).json()["entries"]
    assert [(e["decision"], e["curator"]) for e in log] == [("edit", "bob"), ("accept", "ada")]
    # undoing the accept now would overwrite bob's edit: refused
    assert client.post(f"/api/v1/repairs/{first.json()['id']}/undo", headers=bearer(keys["a"])).status_code == 409
    undone = client.post(f"/api/v1/repairs/{edited.json()['id']}/undo", headers=bearer(keys["a"]))
    assert undone.status_code == 200 and undone.json()["undoes"] == edited.json()["id"]
    assert graph.fact_state("rev-a-f2")["predicate"] == "flows through"
    assert client.post(f"/api/v1/repairs/{edited.json()['id']}/undo", headers=bearer(keys["a"])).status_code == 409
    queued = stores[0].edge("rev-a", "rev-a-f2")
    assert queued.current_version == 3 and queued.decision is None  # the page's row follows the undo


def test_the_page_escapes_evidence_and_cookie_changes_need_the_header(client, keys, hostile):
    signed = client.post("/ui/login", data={"key": keys["a"]}, follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/ui/edge_review"
    assert "httponly" in signed.headers["set-cookie"].lower() and "samesite=strict" in signed.headers["set-cookie"].lower()
    page = client.get("/ui/edge_review?per_page=100")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    with hostile.case("http"):
        assert '<script>alert("x")</script>' not in page.text and "<img src=x" not in page.text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text
    assert page.text.count('class="edge') == 11 and "rev-b-" not in page.text
    with hostile.case("http"):  # a cross-site form cannot add the header: the cookie alone changes nothing
        assert client.patch("/api/v1/edges/rev-a-f1", json={"version": 0, "decision": "reject"}).status_code == 403
    ok = client.patch("/api/v1/edges/rev-a-f1", json={"version": 0, "decision": "reject"},
                      headers={"X-Requested-With": "datacreek"})
    assert ok.status_code == 200
    assert client.get("/ui/edge_review?status=decided").text.count('class="edge') == 1
    filtered = client.get("/ui/edge_review?predicate=precedes&per_page=10")
    assert filtered.text.count('class="edge') == 5
    assert client.post("/ui/login", data={"key": "wrong"}, follow_redirects=False).headers["location"] == \
        "/ui/login?failed=1"
    with hostile.case("http"):  # the admin token signs in for a tenant it names, validated
        bad = client.post("/ui/login", data={"key": ADMIN, "tenant": "../rev-b"}, follow_redirects=False)
        assert bad.headers["location"] == "/ui/login?failed=1"
    with hostile.case("http"):  # another site's form cannot sign a victim in
        assert client.post("/ui/login", data={"key": keys["b"]}, headers={"Sec-Fetch-Site": "cross-site"},
                           follow_redirects=False).status_code == 403
    # the operator's page: the admin token is not kept in the browser, and its session opens one tenant
    operator = client.post("/ui/login", data={"key": ADMIN, "tenant": "rev-b"}, follow_redirects=False)
    assert operator.status_code == 303 and ADMIN not in operator.headers["set-cookie"]
    assert "rev-b-f1" in client.get("/ui/edge_review?per_page=100").text
    session = operator.cookies["datacreek_curator"]
    with hostile.case("http"):  # the session, pointed at another tenant
        other = TestClient(client.app, cookies={"datacreek_curator": session, "datacreek_tenant": "rev-a"})
        moved = other.get("/ui/edge_review", follow_redirects=False)
        assert moved.status_code == 303 and moved.headers["location"] == "/ui/login"
        assert other.get("/api/v1/edges").status_code == 401
    assert TestClient(client.app, cookies={"datacreek_curator": session, "datacreek_tenant": "rev-b"}).get(
        "/api/v1/edges").status_code == 200  # and for its own tenant it works


def test_a_decision_republishes_the_document_for_the_hot_layer(client, keys, graphs, services):
    from datacreek_assets.streaming.events import GraphEvent
    from tests.integration.test_events import all_messages

    before = {(m.partition(), m.offset()) for m in all_messages(f"127.0.0.1:{services.kafka_port}")}
    assert client.patch("/api/v1/edges/rev-a-f3", headers=bearer(keys["a"]),
                        json={"version": 0, "decision": "reject", "reason": "a test"}).status_code == 200
    fresh = [GraphEvent.from_bytes(m.value()) for m in all_messages(f"127.0.0.1:{services.kafka_port}")
             if m.key() == b"rev-a" and (m.partition(), m.offset()) not in before]
    facts = {e.ids["fact_id"] for e in fresh if e.kind == "fact"}
    assert fresh and {e.doc_id for e in fresh} == {"rivers.md"}
    assert "rev-a-f3" not in facts and "rev-a-f2" in facts  # the rejected fact leaves the hot graph
    revision = graphs[1]["rev-a"].document_states()["rivers.md"]["revision"]
    assert {e.revision for e in fresh} == {revision}  # the decision's revision: newer than what it replaces


def test_a_proposed_co_occurrence_becomes_a_fact_once_and_outlives_a_reingestion(client, keys, graphs, stores):
    from datacreek_assets.curation.queue import COOCCURS
    from datacreek_assets.curation.review import refresh_queue
    from tests.integration.edge_review_fixtures import review_document

    graph, store = graphs[1]["rev-a"], stores[0]
    bridges = {"doc_id": "bridges.md", "props": {"signature": "b"}, "next": [], "facts": [],
               "entities": [{"entity_id": f"rev-a-{n}", "name": n.title(), "type": "PLACE"} for n in ("vienna", "ulm")],
               "chunks": [{"chunk_id": f"rev-a-b{i}", "doc_id": "bridges.md",
                           "props": {"doc_id": "bridges.md", "position": i, "text": text}}
                          for i, text in enumerate(("Boats leave. Vienna and Ulm trade grain.", "Ulm sends salt to Vienna."))],
               "mentions": [{"chunk_id": f"rev-a-b{i}", "entity_id": f"rev-a-{n}", "count": 1}
                            for i in range(2) for n in ("vienna", "ulm")]}
    graph.replace_documents([bridges])
    summary = refresh_queue(graph, store, tau=0.0)
    assert summary.proposed == 1
    [proposal] = [e for e in client.get("/api/v1/edges?limit=100", headers=bearer(keys["a"])).json()["edges"]
                  if e["proposed"]]
    assert proposal["predicate"] == COOCCURS and {proposal["subject"], proposal["object"]} == {"Vienna", "Ulm"}
    assert proposal["sentence"] == "Vienna and Ulm trade grain." and proposal["id"].startswith("co-")
    assert graph.fact_state(proposal["id"]) is None  # not a fact until decided
    decided = client.patch(f"/api/v1/edges/{proposal['id']}", headers=bearer(keys["a"]),
                           json={"version": 0, "decision": "edit", "predicate": "trades with"})
    assert decided.status_code == 200, decided.text
    assert decided.json()["after"]["extracted_predicate"] == COOCCURS
    late = client.patch(f"/api/v1/edges/{proposal['id']}", headers=bearer(keys["a2"]),
                        json={"version": 0, "decision": "reject"})
    assert late.status_code == 409  # the second curator on the proposal
    live = {f["fact_id"]: f for f in graph.live_facts()}
    assert live[proposal["id"]]["predicate"] == "trades_with" and live[proposal["id"]]["confirmed"]
    # both documents ingested again: the curator's fact is made again, decided as it was
    graph.replace_documents([review_document("rev-a"), bridges])
    state = graph.fact_state(proposal["id"])
    assert state["predicate"] == "trades_with" and state["confirmed_by"] == "ada" and state["version"] == 1
    again = refresh_queue(graph, store, tau=0.0)
    assert again.proposed == 0 and store.edge("rev-a", proposal["id"]) is None  # proposed once
    # an unknown proposal id (not queued for this tenant) is not made a fact
    assert client.patch("/api/v1/edges/co-0123456789abcdef0123", headers=bearer(keys["a"]),
                        json={"version": 0, "decision": "accept"}).status_code == 404
    # another tenant's curator cannot make A's proposal a fact in either graph
    assert client.patch(f"/api/v1/edges/{proposal['id']}", headers=bearer(keys["b"]),
                        json={"version": 1, "decision": "reject"}).status_code == 404
    assert graphs[1]["rev-b"].fact_state(proposal["id"]) is None
    # undone, the curator's fact is a proposal again: gone from the graph, proposed by the next queue
    undone = client.post(f"/api/v1/repairs/{decided.json()['id']}/undo", headers=bearer(keys["a"]))
    assert undone.status_code == 200, undone.text
    assert undone.json()["version"] == 0 and graph.fact_state(proposal["id"]) is None
    assert proposal["id"] not in {f["fact_id"] for f in graph.live_facts()}
    assert refresh_queue(graph, store, tau=0.0).proposed == 1 and store.edge("rev-a", proposal["id"]).version == 0
