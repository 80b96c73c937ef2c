"""Hot queries on the real FalkorDB, in Python and over HTTP: per-tenant API keys, the admin token,
indexes used (GRAPH.EXPLAIN), and the metrics scraped by a real Prometheus with the stream rules."""

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
from fastapi.testclient import TestClient

from datacreek_assets.hot_graph import UnknownEntity
from datacreek_assets.serving.release_store import ServingStore
from datacreek_assets.streaming.events import document_events
from datacreek_assets.streaming.hot_queries import HotQueries, hot_query_app
from datacreek_assets.streaming.windows import WINDOW_SECONDS, fold, window_of

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TENANTS = ("hq-a", "hq-b")
ADMIN = "hot-admin-token-0123456789"


def rows(doc_id: str, chunks: dict[str, list[str]]) -> tuple[list, list, list]:
    chunk_rows = [{"chunk_id": f"{doc_id}:{c}", "doc_id": doc_id} for c in chunks]
    mentions = [{"chunk_id": f"{doc_id}:{c}", "doc_id": doc_id, "entity_id": e, "entity": e.title()}
                for c, es in chunks.items() for e in es]
    return chunk_rows, mentions, []


@pytest.fixture
def hot(local_resources):
    store = local_resources["hot_graph"].store()
    for tenant in TENANTS:
        store.drop_scope(tenant)
        store.create_scope(tenant)
    at = datetime.now(timezone.utc)
    now, before = window_of(at), window_of(at - timedelta(seconds=WINDOW_SECONDS))
    # the same document and entity names in both tenants, different co-occurrences
    store.apply_window(fold("hq-a", before, document_events("hq-a", *rows("old.txt", {
        "c1": ["danube", "vienna"], "c2": ["danube", "vienna"], "c3": ["vienna", "linz"]}))))
    store.apply_window(fold("hq-a", now, document_events("hq-a", *rows("new.txt", {"c1": ["linz", "salzburg"]}))))
    store.apply_window(fold("hq-b", now, document_events("hq-b", *rows("old.txt", {"c1": ["danube", "budapest"]}))))
    yield store
    for tenant in TENANTS:
        store.drop_scope(tenant)


@pytest.fixture
def keys(tmp_path):
    store = ServingStore(f"sqlite:///{tmp_path / 'serving.db'}")
    return store, store.issue_key("hq-a")[1], store.issue_key("hq-b")[1]


def test_python_queries_answer_from_the_tenant_s_own_graph(hot):
    a = HotQueries(hot, "hq-a")
    assert a.neighbours("Vienna") == [{"entity": "Danube", "weight": 2, "hops": 1},
                                      {"entity": "Linz", "weight": 1, "hops": 1}]
    assert a.neighbours("Danube", hops=2) == [{"entity": "Vienna", "weight": 2, "hops": 1},
                                              {"entity": "Linz", "weight": 1, "hops": 2}]
    assert [(e["a"], e["b"]) for e in a.recent_edges(windows=1)] == [("Linz", "Salzburg")]  # the old window's are not
    assert len(a.recent_edges(windows=2)) == 3  # and the window before
    assert a.top_pairs(1) == [{"a": "Danube", "b": "Vienna", "weight": 2}]
    b = HotQueries(hot, "hq-b")
    assert b.neighbours("Danube") == [{"entity": "Budapest", "weight": 1, "hops": 1}]
    with pytest.raises(UnknownEntity):
        b.neighbours("Vienna")  # hq-a's entity: hq-b's graph does not hold it
    with pytest.raises(ValueError):
        HotQueries(hot, "../hq-a")


def test_every_hot_query_and_stream_merge_uses_an_index(hot):
    plans = hot.query_plans("hq-a")
    assert set(plans) == {"neighbours_1hop", "neighbours_top", "neighbours_2hop", "recent_edges", "merge_chunks", "merge_mentions",
                          "merge_facts", "merge_pairs", "refresh_top", "document_revisions", "merge_documents"}
    for name, plan in plans.items():
        assert "By Index Scan" in plan, f"{name} scans without an index:\n{plan}"
        assert "All Node Scan" not in plan and "Label Scan" not in plan, f"{name}:\n{plan}"


def test_http_api_authenticates_per_tenant_and_never_crosses(hot, keys):
    key_store, key_a, key_b = keys
    client = TestClient(hot_query_app(hot, key_store, ADMIN))

    def get(path: str, token: str | None = None, **headers):
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        return client.get(path, headers={**auth, **headers})

    reply = get("/v1/hot/neighbours?entity=Danube&hops=2", key_a)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"tenant": "hq-a", "results": [{"entity": "Vienna", "weight": 2, "hops": 1},
                                                          {"entity": "Linz", "weight": 1, "hops": 2}]}
    assert get("/v1/hot/neighbours?entity=Danube", key_b).json()["results"] == [
        {"entity": "Budapest", "weight": 1, "hops": 1}]
    assert get("/v1/hot/top-pairs?limit=5", key_b).json()["results"] == [{"a": "Budapest", "b": "Danube", "weight": 1}]
    assert [r["b"] for r in get("/v1/hot/recent-edges?windows=1", key_a).json()["results"]] == ["Salzburg"]
    # crossing the line
    assert get("/v1/hot/neighbours?entity=Vienna", key_b).status_code == 404  # hq-a's entity, asked by hq-b
    assert get("/v1/hot/neighbours?entity=Danube", key_b, **{"X-Tenant": "hq-a"}).status_code == 403
    assert get("/v1/hot/neighbours?entity=Danube").status_code == 401
    assert get("/v1/hot/neighbours?entity=Danube", "dck_not-a-key").status_code == 401
    assert get("/v1/hot/neighbours?entity=Danube", ADMIN).status_code == 401  # the admin token is no tenant key
    assert get("/admin/v1/hot/hq-b/neighbours?entity=Danube", key_a).status_code == 401  # a tenant key is no admin
    # operators
    assert get("/admin/v1/hot/hq-b/neighbours?entity=Danube", ADMIN).json()["results"][0]["entity"] == "Budapest"
    assert get("/admin/v1/hot/..%2Fhq-a/top-pairs", ADMIN).status_code in (400, 404)
    assert get("/admin/v1/hot/HQ-A/top-pairs", ADMIN).status_code == 400
    assert get("/admin/v1/hot/hq-nobody/top-pairs", ADMIN).status_code == 404
    # bad input
    assert get("/v1/hot/neighbours?entity=Danube&hops=3", key_a).status_code == 422
    assert get("/v1/hot/neighbours", key_a).status_code == 422
    assert get("/v1/hot/recent-edges?windows=0", key_a).status_code == 422
    metrics = get("/metrics").text
    assert 'datacreek_hot_query_seconds_count{query="neighbours_2hop",tenant="hq-a"} 1.0' in metrics
    assert 'datacreek_hot_query_seconds_count{query="top_pairs",tenant="hq-b"} 1.0' in metrics


def test_prometheus_scrapes_the_stream_series_and_loads_its_rules(hot, keys, services, tmp_path):
    import socket

    import uvicorn

    from datacreek_assets.billing.prometheus import PrometheusServer

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    hot.record_window("hq-a", "2020-01-01T00:00:00Z", 0, 3, [0.7, 31.0, 33.0], int(time.time() * 1000))
    key_store, key_a, _ = keys
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(hot_query_app(hot, key_store, ADMIN, f"127.0.0.1:{services.kafka_port}"),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.1)
        requests.get(f"http://127.0.0.1:{port}/v1/hot/top-pairs", headers={"Authorization": f"Bearer {key_a}"},
                     timeout=10).raise_for_status()
        with PrometheusServer(tmp_path / "prometheus", free_port(), [f"127.0.0.1:{port}"],
                              job="datacreek-hot-graph") as prometheus:
            deadline = time.monotonic() + 60
            lag = {}
            while time.monotonic() < deadline and not {"hq-a", "hq-b"} <= set(lag):
                lag = {r["metric"]["tenant"]: float(r["value"][1])
                       for r in prometheus.query("datacreek_stream_lag_seconds")}
                time.sleep(0.5)
            assert {"hq-a", "hq-b"} <= set(lag) and all(v >= 0 for v in lag.values())
            [count] = prometheus.query('datacreek_stream_event_to_queryable_seconds_count{tenant="hq-a"}')
            assert float(count["value"][1]) == 3
            [p50] = prometheus.query('histogram_quantile(0.5, datacreek_stream_event_to_queryable_seconds_bucket'
                                     '{tenant="hq-a"})')
            assert 30 < float(p50["value"][1]) <= 35  # 31 s: in the (30, 35] bucket
            assert prometheus.query('datacreek_hot_query_seconds_count{tenant="hq-a",query="top_pairs"}')
            rules = {r["name"] for g in prometheus.rule_groups() for r in g["rules"]}
            assert {"HotGraphStreamLagging", "HotQueryP95Above5ms", "tenant:stream_event_to_queryable_seconds:p95_5m",
                    "tenant_query:hot_query_seconds:p95_5m"} <= rules
            dashboard = json.loads((REPO / "monitoring/grafana/datacreek-hot-graph.json").read_text())
            for panel in dashboard["panels"]:
                for target in panel["targets"]:
                    prometheus.query(target["expr"].replace("$tenant", ".*"))
    finally:
        server.should_exit = True
        thread.join(10)
