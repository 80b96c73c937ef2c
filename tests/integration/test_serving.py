"""Serving against a real Ray Serve instance (the session's Ray head, started by `services`):
routing by API key and version, the 5 % split, a spiked canary rolled back by the canary
health sensor, a healthy one promoted by production_release, cross-tenant attempts refused,
and the router's latency histograms scraped by a real Prometheus."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from collections import Counter

import dagster as dg
import pytest
import requests

from datacreek_assets.billing.prometheus import PrometheusServer
from datacreek_assets.defs.serving.assets import canary_release, production_release
from datacreek_assets.defs.serving.sensors import canary_health_sensor
from datacreek_assets.finetune.fixtures import random_adapter_release
from datacreek_assets.local_services import free_port
from datacreek_assets.partitions import TENANTS_PARTITION
from datacreek_assets.serving.control import ServingError
from datacreek_assets.serving.routing import BUCKETS, Route, canary_bucket
from datacreek_assets.serving.traffic import TrafficGenerator
from tests.raw_http import raw_status
from tests.serving_checks import adapters_dropped, samples_reported

pytestmark = pytest.mark.integration

BODY = {"messages": [{"role": "user", "content": "What does the json module provide?"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def model_files(services, tmp_path_factory):
    return random_adapter_release(services.download_cache / "models", tmp_path_factory.mktemp("gguf"), adapters=2)


@pytest.fixture(scope="module")
def serving(local_resources):
    return local_resources["serving"]


@pytest.fixture
def control(serving):
    control = serving.control()
    control.ensure_router()
    yield control
    control.close()


@pytest.fixture
def tenants(control, model_files):
    """Factory: a tenant with base as production and one adapter as canary (5 %), and its key;
    every tenant made is removed afterwards (deployments, keys, history)."""
    base, adapters = model_files
    made = []

    def make(version: str = "v1", adapter: int = 0, weight: float = 0.05) -> tuple[str, str]:
        tenant = f"srv-{uuid.uuid4().hex[:8]}"
        made.append(tenant)
        control.release_canary(tenant, version, str(base), str(adapters[adapter]), str(base), weight)
        return tenant, control.store.issue_key(tenant)[1]

    yield make
    for tenant in made:
        control.remove_tenant(tenant)
        assert control.store.releases(tenant) == [] and control.store.keys(tenant) == []
        # removal returns once the pools hold none of its adapters
        assert not [pair for pair in control.adapters_loaded() if pair[0] == tenant]


def chat(control, key: str | None, body=BODY, authorization: str | None = None, **headers) -> requests.Response:
    sent = {k.replace("_", "-"): v for k, v in headers.items()}
    if key is not None or authorization is not None:
        sent["Authorization"] = authorization or f"Bearer {key}"
    if isinstance(body, (bytes, str)):
        return requests.post(f"{control.url}/v1/chat/completions", data=body, headers=sent, timeout=30)
    return requests.post(f"{control.url}/v1/chat/completions", json=body, headers=sent, timeout=30)


def chunked_body_status(control, key: str, chunks: int, chunk_bytes: int) -> int:
    """POST a chunked body of ``chunks`` chunks without its terminating chunk; the reply's status."""
    from urllib.parse import urlsplit

    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {urlsplit(control.url).netloc}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    body = (f"{chunk_bytes:x}\r\n".encode() + b" " * chunk_bytes + b"\r\n" for _ in range(chunks))
    return raw_status(control.url, [head, *body])


def test_requests_are_routed_by_key_and_pinned_version(control, tenants):
    alpha, alpha_key = tenants("v1", adapter=0)
    beta, beta_key = tenants("v2", adapter=1)
    reply = chat(control, alpha_key, X_Request_Id="fixed-1")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] <= 3
    assert reply.headers["X-Served-By"].startswith(f"{alpha}-")
    assert chat(control, beta_key).headers["X-Served-By"].startswith(f"{beta}-")

    pinned = chat(control, alpha_key, X_Model_Version="v1")
    assert pinned.status_code == 200
    assert (pinned.headers["X-Served-By"], pinned.headers["X-Release-Role"]) == (f"{alpha}-v1", "canary")
    assert chat(control, alpha_key, X_Model_Version="base").headers["X-Served-By"] == f"{alpha}-base"
    # the X-Tenant header may repeat the key's tenant, never name another one
    assert chat(control, alpha_key, X_Tenant=alpha).status_code == 200
    assert chat(control, alpha_key, X_Tenant=beta).status_code == 403
    # beta's canary version is not reachable with alpha's key, nor anything alpha does not serve
    for version, status in (("v2", 404), ("v9", 404), ("../v1", 400), ("V1", 400)):
        refused = chat(control, alpha_key, X_Model_Version=version)
        assert refused.status_code == status, (version, refused.text)
        assert beta not in refused.text
    assert alpha in chat(control, alpha_key).headers["X-Served-By"]


def test_bad_requests_get_clear_errors_and_the_router_keeps_serving(control, tenants, hostile):
    tenant, key = tenants()
    cases = [
        (None, BODY, {}, 401),
        ("dck_not-a-key", BODY, {}, 401),
        (None, BODY, {"authorization": f"Basic {key}"}, 401),
        (key, b"{not json", {}, 422),
        (key, {"messages": []}, {}, 422),
        (key, {"messages": [{"role": "wizard", "content": "hi"}]}, {}, 422),
        (key, {**BODY, "max_tokens": 0}, {}, 422),
        (key, {"messages": [{"role": "user", "content": "word " * 1700}]}, {}, 413),  # > 8000 characters
        (key, b"x" * 70_000, {}, 413),
        (key, BODY, {"X_Request_Id": "r" * 200}, 400),
    ]
    for auth, body, headers, status in cases:
        with hostile.case("http router"):
            reply = chat(control, auth, body, **headers)
            assert reply.status_code == status, (auth, str(body)[:40], reply.status_code, reply.text[:200])
            assert reply.json()["error"]["message"]
    # a chunked body (no Content-Length) is capped while it streams: never finished here, it is
    # refused once it passes the limit (read whole first, the router would wait for its end)
    with hostile.case("http router"):
        assert chunked_body_status(control, key, chunks=64, chunk_bytes=8192) == 413
        assert chat(control, key).status_code == 200  # and the router keeps serving
    # under the character limit but beyond the model's 1024-token context: refused by llama.cpp, as 413
    long_prompt = " ".join(f"zq{i}x" for i in range(1300))
    with hostile.case("http router"):
        too_long = chat(control, key, {"messages": [{"role": "user", "content": long_prompt}], "max_tokens": 2})
        assert too_long.status_code == 413 and too_long.json()["error"]["type"] == "prompt_too_long"
    # deeply nested JSON, NUL and invalid UTF-8 in the body, a content that is not a string
    for body, status in ((b'{"messages": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", 422),  # under the 64 KiB cap
                         (b'{"messages": [{"role": "user", "content": "a\\u0000b"}]}', 200),
                         (b"\xff\xfe{}", 422),
                         ({"messages": [{"role": "user", "content": {"$ne": 1}}]}, 422)):
        with hostile.case("http router"):
            reply = chat(control, key, body)
            assert reply.status_code == status, (str(body)[:40], reply.status_code, reply.text[:200])
            assert chat(control, key).status_code == 200
    # a tenant with a key but nothing released
    key_only = f"srv-{uuid.uuid4().hex[:8]}"
    _, lonely_key = control.store.issue_key(key_only)
    try:
        assert chat(control, lonely_key).status_code == 404
    finally:
        control.store.forget_tenant(key_only)
    # operators' endpoints want the admin token, not a tenant's key
    for path in (f"/admin/v1/tenants/{tenant}/window", "/admin/v1/routers", "/metrics"):
        assert requests.get(control.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 401
    assert requests.post(f"{control.url}/admin/v1/tenants/{tenant}/reload", timeout=10).status_code == 401
    assert chat(control, key).status_code == 200  # still serving


def test_five_percent_of_requests_go_to_the_canary_and_retries_stay_put(control, tenants):
    tenant, key = tenants()
    roles = Counter()
    mismatched = 0
    route = Route("base", "v1", 0.05)
    for i in range(800):
        request_id = f"req-{i}"
        role = chat(control, key, X_Request_Id=request_id).headers["X-Release-Role"]
        roles[role] += 1
        mismatched += role != route.choose(tenant, request_id)[1]
    share = roles["canary"] / 800
    # binomial(800, 0.05): sd 0.77 %; 4 sd either side
    assert 0.05 - 0.031 <= share <= 0.05 + 0.031, roles
    assert mismatched == 0  # the router's split is exactly the documented hash split
    canary_id = next(f"req-{i}" for i in range(800) if canary_bucket(tenant, f"req-{i}") < 0.05 * BUCKETS)
    assert {chat(control, key, X_Request_Id=canary_id).headers["X-Release-Role"] for _ in range(5)} == {"canary"}


def test_two_router_replicas_share_the_traffic_and_the_canary_is_judged_over_both(control, tenants):
    assert control.router_replicas == 2
    tenant, key = tenants(weight=0.5)
    before = control.routers()
    assert len(before) == 2
    roles = Counter(chat(control, key, X_Request_Id=f"two-{i}").headers["X-Release-Role"] for i in range(60))
    assert sum(roles.values()) == 60 and roles["canary"] > 10
    # each replica answered some of them: neither one's samples alone are the tenant's traffic
    deadline, window = time.monotonic() + 30, {}
    while time.monotonic() < deadline:
        window = control.window(tenant)
        if window["production"]["count"] + window["canary"]["count"] == 60:
            break
        time.sleep(0.2)
    assert (window["production"]["count"], window["canary"]["count"]) == (roles["production"], roles["canary"])
    assert window["canary"]["total"] == roles["canary"]
    after = control.routers()
    assert set(after) == set(before)
    served = {router: after[router]["samples"] - before[router]["samples"] for router in after}
    assert all(n > 0 for n in served.values()) and sum(served.values()) >= 60, served
    # a rollback returns once both replicas route without the canary: none sends it another request
    timings = control.rollback(tenant, "v1", "test", {})
    assert timings["router_replicas"] == 2 and 0 < timings["traffic_off_s"] < 15
    assert {chat(control, key, X_Request_Id=f"two-{i}").headers["X-Release-Role"] for i in range(60)} == {"production"}

def with_policy(serving, **changes):
    return type(serving)(**{**serving.model_dump(), **changes})


def traffic(control, key: str) -> TrafficGenerator:
    """One client, as fast as the router answers it."""
    return TrafficGenerator(control.url, key, rate_per_s=1000, clients=1).start()


def test_a_latency_spike_in_the_canary_is_rolled_back_by_the_sensor(control, serving, tenants, instance):
    tenant, key = tenants()
    assert (tenant, "v1") in control.adapters_loaded()  # loaded on its base's pool before it was routed
    drill = with_policy(serving, min_requests=8, promote_after_s=3600.0)
    control.inject_delay(tenant, "v1", 0.25)
    load = traffic(control, key)
    spiked = time.monotonic()
    result = None
    try:
        while time.monotonic() - spiked < 120:
            with dg.build_sensor_context(instance=instance, resources={"serving": drill}) as context:
                result = canary_health_sensor(context)
            if result.asset_events:
                break
            time.sleep(0.5)
    finally:
        load.stop()
    assert result is not None and result.asset_events, "the sensor never rolled the canary back"
    event = result.asset_events[0]
    assert (event.asset_key, event.partition) == (canary_release.key, tenant)
    meta = {k: getattr(v, "value", v) for k, v in event.metadata.items()}
    assert meta["status"] == "rolled_back" and "p99" in meta["reason"]
    assert meta["canary_p99_s"] > 2 * meta["production_p99_s"] and meta["canary_p99_s"] >= 0.25
    assert not result.run_requests
    release = control.store.release(tenant, "v1")
    assert release.status == "rolled_back" and release.numbers["canary_p99_s"] == meta["canary_p99_s"]
    assert adapters_dropped(control, [tenant], ("v1",))  # no replica deleted: the adapter is dropped
    assert control.store.route(tenant) == Route("base")
    assert {chat(control, key, X_Request_Id=f"after-{i}").headers["X-Release-Role"] for i in range(60)} == {"production"}
    assert chat(control, key, X_Model_Version="v1").status_code == 404
    assert len(load.latencies["canary"]) >= 8 and set(load.status) == {200}


def test_a_healthy_canary_is_promoted_and_the_old_version_retired(control, serving, tenants, instance):
    tenant, key = tenants()
    policy = with_policy(serving, min_requests=8, promote_after_s=0.0, promote_min_requests=8)
    # too early: a manual production_release run is refused while the canary has no traffic
    instance.add_dynamic_partitions(TENANTS_PARTITION, [tenant])
    early = dg.materialize([production_release], partition_key=tenant, resources={"serving": policy},
                           instance=instance, raise_on_error=False)
    assert not early.success
    failure = early.get_step_failure_events()[0].step_failure_data.error.message
    assert "not ready for production" in failure and "needs 8 requests" in failure
    load = traffic(control, key)
    requested = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and requested is None:
            with dg.build_sensor_context(instance=instance, resources={"serving": policy}) as context:
                result = canary_health_sensor(context)
            assert not result.asset_events, "a healthy canary was rolled back"
            requested = result.run_requests[0] if result.run_requests else None
            time.sleep(0.5)
    finally:
        load.stop()
    assert requested is not None
    assert requested.partition_key == tenant and requested.asset_selection == [production_release.key]
    assert requested.run_key.startswith(f"promote:{tenant}:v1:")
    promoted = dg.materialize([production_release], partition_key=tenant, resources={"serving": policy},
                              instance=instance, tags=requested.tags)
    meta = {k: v.value for k, v in promoted.asset_materializations_for_node("production_release")[0].metadata.items()}
    assert meta["production"] == "v1" and meta["retired"] == "base"
    assert control.store.route(tenant) == Route("v1")
    assert control.store.release(tenant, "base").status == "retired"
    assert (tenant, "v1") in control.adapters_loaded()
    assert {chat(control, key, X_Request_Id=f"p-{i}").headers["X-Served-By"] for i in range(40)} == {f"{tenant}-v1"}


def test_a_rollback_cut_off_half_way_is_finished_by_the_next_check(control, serving, tenants):
    tenant, key = tenants()
    assert (tenant, "v1") in control.adapters_loaded()  # so that its drop below is a change
    # the control plane recorded the rollback, then died before telling the router or Serve
    control.store.end(tenant, "v1", "rolled_back", "recorded, then the process died", expect="canary")
    assert control.check_canaries(serving.policy()) == []  # no live canary left to judge
    assert adapters_dropped(control, [tenant], ("v1",))
    # a stale router still asking the pool for the rolled-back adapter is refused, not served
    from ray import serve

    from datacreek_assets.serving.pool_server import AdapterServer, adapter_model_id, pool_name

    release = control.store.release(tenant, "v1")
    stale = serve.get_deployment_handle(AdapterServer.name, app_name=pool_name(release.model.sha256)).options(
        multiplexed_model_id=adapter_model_id(tenant, "v1", release.adapter))
    with pytest.raises(Exception, match="rolled_back"):
        stale.remote({"tenant": tenant, "version": "v1", **BODY, "temperature": 0.0}).result(timeout_s=60)
    assert (tenant, "v1") not in control.adapters_loaded()
    assert {chat(control, key, X_Request_Id=f"h-{i}").headers["X-Release-Role"] for i in range(60)} == {"production"}
    assert chat(control, key, X_Model_Version="v1").status_code == 404


def test_a_canary_that_cannot_start_leaves_nothing_behind(control, model_files, tmp_path):
    base, _ = model_files
    tenant = f"srv-{uuid.uuid4().hex[:8]}"
    broken = tmp_path / "adapter.gguf"
    broken.write_bytes(b"GGUF but not really")
    _, key = control.store.issue_key(tenant)
    try:
        with pytest.raises(ServingError, match="deploying .*-v1 failed: .*could not load"):
            control.release_canary(tenant, "v1", str(base), str(broken), str(base), 0.05)
        assert (tenant, "v1") not in control.adapters_loaded() and control.store.release(tenant, "v1") is None
        # the base model it was to be compared with went live and is routed
        assert control.store.route(tenant) == Route("base")
        reply = chat(control, key)
        assert reply.status_code == 200 and reply.headers["X-Served-By"] == f"{tenant}-base"
    finally:
        control.remove_tenant(tenant)
    assert control.store.releases(tenant) == [] and control.store.route(tenant) is None


def test_a_model_file_changed_in_the_object_store_is_refused_by_the_replica(control, model_files):
    """Replicas fetch releases' files from the object store by digest: an adapter whose stored
    bytes no longer match the digest its release names is never loaded, and holds up nothing
    else; releasing the file again replaces the changed copy."""
    from datacreek_assets.object_store import TenantObjectStore
    from datacreek_assets.serving.model_files import publish_adapter, publish_base

    base, adapters = model_files
    tenant = f"srv-{uuid.uuid4().hex[:8]}"
    store = control.model_source.store()
    base_ref, ref = publish_base(store, base), publish_adapter(store, tenant, adapters[1])
    tampered = bytearray(adapters[1].read_bytes())
    tampered[1000] ^= 0xFF
    store.put(ref.key, bytes(tampered))  # same size, other bytes, after the release recorded the digest
    _, key = control.store.issue_key(tenant)
    try:
        control.store.start(tenant, "base", "production", base_ref, None)
        control.store.start(tenant, "v1", "canary", base_ref, ref, 0.05)
        control.reconcile()  # the router reads the routes
        with pytest.raises(ServingError, match=f"deploying {tenant}-v1 failed: .*SHA-256"):
            control._deploy(control.store.release(tenant, "v1"))
        refused = chat(control, key, X_Model_Version="v1")  # the router sends it: the replica refuses the file
        message = refused.json()["error"]["message"]
        assert refused.status_code == 503 and f"{tenant}-v1" in message and "ModelDigestMismatch" in message
        # a request the split sends to that canary is answered by production (the canary's window
        # counts the failure)
        split = next(f"r{i}" for i in range(BUCKETS) if canary_bucket(tenant, f"r{i}") < round(0.05 * BUCKETS))
        answered = chat(control, key, X_Request_Id=split)
        assert answered.status_code == 200, answered.text
        assert (answered.headers["X-Served-By"], answered.headers["X-Release-Role"]) == (f"{tenant}-base", "production")
        deadline = time.monotonic() + 30  # the routers report every 0.5 s
        while (control.window(tenant).get("canary") or {}).get("errors", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        window = control.window(tenant)
        assert window["canary"]["errors"] == 1 and window["canary"]["count"] == 1
        assert not (window.get("production") or {}).get("count")  # the fallback is no sample of the split
        assert (tenant, "v1") not in control.adapters_loaded()
        assert not (Path(control.model_source.cache_dir) / ref.key).exists()
        reply = chat(control, key, X_Model_Version="base")
        assert reply.status_code == 200 and reply.headers["X-Served-By"] == f"{tenant}-base"

        control.store.end(tenant, "v1", "rolled_back", "its file was refused", expect="canary")
        control.release_canary(tenant, "v2", str(base), str(adapters[1]), str(base), 0.05)
        assert store.get(ref.key) == adapters[1].read_bytes()
        reply = chat(control, key, X_Model_Version="v2")
        assert reply.status_code == 200 and reply.headers["X-Served-By"] == f"{tenant}-v2"
        assert control.store.release(tenant, "v2").adapter == ref
    finally:
        control.remove_tenant(tenant)
        TenantObjectStore(store, tenant).delete_all()  # what tenant removal does to its objects


def test_router_latency_histograms_are_scraped_by_prometheus(control, tenants, tmp_path, settings):
    tenant, key = tenants()
    for i in range(40):
        chat(control, key, X_Request_Id=f"m-{i}")
    target = control.url.removeprefix("http://")
    with PrometheusServer(tmp_path / "prometheus", free_port(), [target], job="datacreek-serving",
                          bearer_token=settings.serving_admin_token()) as prometheus:
        deadline, counts = time.monotonic() + 30, {}
        while time.monotonic() < deadline and not counts:
            counts = {r["metric"]["deployment"]: float(r["value"][1]) for r in prometheus.query(
                f'sum by (deployment) (datacreek_serving_request_seconds_count{{tenant="{tenant}"}})')}
            time.sleep(1)
        assert sum(counts.values()) >= 40 and f"{tenant}-base" in counts
        p99 = prometheus.query(f'histogram_quantile(0.99, sum by (le) '
                               f'(datacreek_serving_request_seconds_bucket{{deployment="{tenant}-base"}}))')
        assert p99 and 0 < float(p99[0]["value"][1]) < 30
        # the recording rule of monitoring/prometheus/rules.yml evaluates over the same series
        deadline, recorded = time.monotonic() + 30, []
        while time.monotonic() < deadline and not recorded:
            recorded = prometheus.query(f'deployment:serving_request_seconds:p99_1m{{tenant="{tenant}"}}')
            time.sleep(1)
        assert f"{tenant}-base" in {r["metric"]["deployment"] for r in recorded}


def publish_corpus(serving, tenant: str, texts: list[str]) -> dict[str, str]:
    """A tenant's retrieval index, built from real MiniLM vectors of its texts, where the router
    reads it; returns its chunks' texts by id."""
    import numpy as np

    from datacreek_assets.embeddings.embedder import embed_texts
    from datacreek_assets.retrieval.index import RetrievalIndex, publish

    ids = [f"{tenant}-chunk-{i}" for i in range(len(texts))]
    index = RetrievalIndex(tenant, ids, [f"{tenant}/doc.md"] * len(texts), texts,
                           np.asarray(embed_texts(texts), dtype=np.float32))
    publish(index, Path(serving.models_dir) / "tenants" / tenant / "retrieval")
    return dict(zip(ids, texts))


def test_retrieval_grounds_each_request_in_its_own_tenants_chunks_only(control, serving, tenants):
    from datacreek_assets.retrieval.extractive import is_span

    alpha, alpha_key = tenants("v1", adapter=0)
    beta, beta_key = tenants("v2", adapter=1)
    gamma, gamma_key = tenants("v3", adapter=0)  # no index yet
    question = {"messages": [{"role": "user", "content": "How do I serialize an object to JSON?"}], "max_tokens": 3}
    alpha_ids = publish_corpus(serving, alpha, [
        "dumps\n\nSerialize obj to a JSON formatted str.", "loads\n\nDeserialize s to a Python object.",
        "The json module encodes and decodes JSON.", "JSONEncoder is the extensible JSON encoder."])
    # beta's corpus is about the same subject, so a leak would rank high
    beta_ids = publish_corpus(serving, beta, [
        "json.dumps serializes an object to JSON text.", "Serialize objects to JSON with the encoder class.",
        "To serialize to a file, use json.dump.", "Paella needs saffron and patience."])
    seen = {alpha: set(), beta: set()}
    reported = sum(r["samples"] for r in control.routers().values())
    for tenant, key in ((alpha, alpha_key), (beta, beta_key), (alpha, alpha_key), (beta, beta_key)):
        reply = chat(control, key, question, X_Model_Version="base")
        assert reply.status_code == 200, reply.text
        assert reply.headers["X-Retrieval"] == "on"
        chunks = reply.json()["retrieval"]["chunks"]
        assert len(chunks) == 3 and all(c["doc_id"] == f"{tenant}/doc.md" for c in chunks)
        seen[tenant] |= {c["chunk_id"] for c in chunks}
        # greedy and grounded: answered extractively, with a span of this tenant's own passages
        texts = {**alpha_ids, **beta_ids}
        answer = reply.json()["choices"][0]["message"]["content"]
        assert reply.headers["X-Extractive"] == "on" and is_span(answer, [texts[c["chunk_id"]] for c in chunks])
    assert seen[alpha] <= set(alpha_ids) and seen[beta] <= set(beta_ids)
    # pinned requests (an evaluation) are served and measured, but the canary is not judged by them
    assert samples_reported(control, reported + 4)  # whichever router replicas answered them
    window = requests.get(f"{control.url}/admin/v1/tenants/{alpha}/window",
                          headers={"Authorization": f"Bearer {control.admin_token}"}, timeout=10).json()
    assert window["production"]["count"] == 0 and window["canary"]["count"] == 0
    assert f"{alpha}-chunk-0" in seen[alpha]  # the passage that answers it was found
    off = chat(control, alpha_key, question, X_Retrieval="off")
    assert off.status_code == 200 and off.headers["X-Retrieval"] == "off" and off.json()["retrieval"]["chunks"] == []
    assert off.headers["X-Extractive"] == "off"  # nothing to hold the answer to
    free = chat(control, alpha_key, question, X_Extractive="off")
    assert free.status_code == 200 and free.headers["X-Retrieval"] == "on" and free.headers["X-Extractive"] == "off"
    assert chat(control, alpha_key, {**question, "temperature": 0.7}).headers["X-Extractive"] == "off"  # sampled
    assert chat(control, alpha_key, question, X_Retrieval="maybe").status_code == 400
    assert chat(control, alpha_key, question, X_Extractive="maybe").status_code == 400
    # a tenant without an index is served without passages (and never with another tenant's)
    bare = chat(control, gamma_key, question)
    assert bare.status_code == 200 and bare.headers["X-Retrieval"] == "unavailable"
    assert bare.json()["retrieval"]["chunks"] == []
    scraped = requests.get(f"{control.url}/metrics", headers={"Authorization": f"Bearer {control.admin_token}"},
                           timeout=10).text
    assert f'datacreek_serving_retrieval_seconds_count{{tenant="{alpha}"}}' in scraped


def test_the_ray_head_killed_during_a_canary_comes_back_with_every_route_and_no_wrong_answers(
        control, serving, tenants, services):
    """SIGKILL every process of the Ray head (GCS, raylet, Serve's controller and replicas) while
    two tenants each run a canary; bring it back and reconcile from the release store. Requests
    keep coming all along: each one is refused or answered by its own tenant's model, never
    another's, and afterwards every live route is served again."""
    import threading

    import ray

    from datacreek_assets.local_services import RayService
    from tests.integration.test_fault_injection import kill_hard

    alpha, alpha_key = tenants("v1", adapter=0, weight=0.5)
    beta, beta_key = tenants("v2", adapter=1, weight=0.5)
    live = {(alpha, "v1"), (beta, "v2")}
    assert live <= control.adapters_loaded()

    # this driver lets go first: a Ray driver whose GCS stays unreachable ends its own process
    ray.shutdown()
    head = RayService(services)
    for pid in [head.our_pid(), *head.head_processes()]:
        if pid is not None:
            kill_hard(pid)
    answers, stop = [], threading.Event()

    def ask(tenant: str, key: str) -> None:
        while not stop.is_set():
            try:
                reply = chat(control, key)
                answers.append((tenant, reply.status_code, reply.headers.get("X-Served-By", "")))
            except requests.RequestException:
                answers.append((tenant, None, ""))
            time.sleep(0.2)  # leave the cores to the head's restart

    askers = [threading.Thread(target=ask, args=pair) for pair in ((alpha, alpha_key), (beta, beta_key))]
    for asker in askers:
        asker.start()
    try:
        head.up(timeout=240, progress=lambda message: None)
        recovered = serving.control()
        recovered.ensure_router()  # serve.start, the router, then reconcile: every live release redeployed
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not all(
                any(t == tenant and status == 200 for t, status, _ in answers[-20:]) for tenant in (alpha, beta)):
            time.sleep(0.5)
    finally:
        stop.set()
        for asker in askers:
            asker.join()
    served = [(tenant, by) for tenant, status, by in answers if status == 200]
    assert {tenant for tenant, _ in served} == {alpha, beta}  # both came back
    assert all(by.startswith(f"{tenant}-") for tenant, by in served), Counter(served)  # never another's model
    assert None in {status for _, status, _ in answers}  # requests did meet the dead head
    assert live <= recovered.adapters_loaded()  # the pool came back with both adapters loaded
    recovered.close()


@pytest.fixture
def control_api_url(serving, local_resources, tmp_path):
    """The serving control API, served by uvicorn over the platform's real serving (Ray, the
    release store, the object store): what tenants' release steps call in a cluster."""
    import threading

    import uvicorn

    from datacreek_assets.serving.control_api import control_api

    port = free_port()
    registry = local_resources["tenant_registry"].registry()
    platform = serving.control()
    app = control_api(lambda: platform, CONTROL_SECRET, tmp_path / "admitting",
                      lambda tenant: registry.get(tenant) is not None)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    platform.close()


CONTROL_SECRET = "integration-control-secret"


def test_a_release_step_goes_through_the_control_api_for_its_own_tenant_only(control, serving, model_files,
                                                                             control_api_url, local_resources):
    """The release as a tenant's pod makes it in a cluster: its files uploaded under its own
    prefix (the base staged, as on a platform that does not hold it yet), the change asked of
    the control API with its own token. Another tenant's token, path or adapter gets nothing."""
    from datacreek_assets.serving.control import ReleaseRefused
    from datacreek_assets.serving.control_api import control_token
    from datacreek_assets.serving.control_client import ServingControlClient
    from datacreek_assets.serving.model_files import adapter_key, base_key, publish_base, staged_base_key
    from datacreek_assets.serving.releases import Candidate
    from datacreek_assets.object_store import file_sha256

    base, adapters = model_files
    tenant, other = f"srv-{uuid.uuid4().hex[:8]}", f"srv-{uuid.uuid4().hex[:8]}"
    registry = local_resources["tenant_registry"].registry()
    for name in (tenant, other):
        registry.add(name)
    store = serving.object_store.store()
    digest = file_sha256(base)
    store.delete(base_key(digest))  # a platform without this base yet: the tenant stages it
    client = ServingControlClient(control_api_url, control_token(CONTROL_SECRET, tenant), store, tenant)
    candidate = Candidate("v1", "run-1", str(base), str(adapters[0]), 0.5)
    try:
        outcome = client.release_newest(tenant, candidate)
        assert outcome["status"] == "canary" and outcome["production"] == "base"
        assert outcome["model_key"] == base_key(digest) and not store.exists(staged_base_key(tenant, digest))
        assert store.stored_sha256(base_key(digest)) == digest  # admitted: the shared copy is back
        assert outcome["adapter_key"] == adapter_key(tenant, file_sha256(adapters[0]))
        assert {r.version: r.status for r in control.store.live(tenant).values()} == {"base": "production",
                                                                                        "v1": "canary"}
        _, key = control.store.issue_key(tenant)
        versions = {chat(control, key, X_Model_Version=v).headers.get("X-Served-By") for v in ("v1", "base")}
        assert versions == {f"{tenant}-v1", f"{tenant}-base"}
        # released once: asking again changes nothing
        assert client.release_newest(tenant, candidate)["status"] == "unchanged (canary)"
        with pytest.raises(ReleaseRefused, match="not ready"):  # the policy holds through the API too
            client.promote_ready(tenant)

        # the other tenant: with this tenant's token, nothing; with its own, not this tenant's adapter
        url = f"{control_api_url}/v1/tenants/{other}"
        body = {"version": "v1", "model": {"key": base_key(digest), "sha256": digest, "size": base.stat().st_size},
                "adapter": {"key": outcome["adapter_key"], "sha256": outcome["adapter_sha256"],
                            "size": adapters[0].stat().st_size}}
        mine = {"Authorization": f"Bearer {control_token(CONTROL_SECRET, tenant)}"}
        theirs = {"Authorization": f"Bearer {control_token(CONTROL_SECRET, other)}"}
        assert requests.post(f"{url}/releases", json=body, headers=mine, timeout=60).status_code == 403
        assert requests.post(f"{url}/releases", json=body, headers=theirs, timeout=60).status_code == 403
        assert requests.post(f"{url}/production", headers=mine, timeout=60).status_code == 403
        # its own adapter key, never uploaded: refused before anything is deployed
        body["adapter"]["key"] = adapter_key(other, body["adapter"]["sha256"])
        reply = requests.post(f"{url}/releases", json=body, headers=theirs, timeout=60)
        assert reply.status_code == 422 and "upload it first" in reply.json()["detail"]
        assert control.store.releases(other) == []
        assert control.store.route(tenant).canary == "v1"  # untouched by all of that
        # once removed from the registry, its token acts for nothing
        registry.remove(other)
        assert requests.post(f"{url}/production", headers=theirs, timeout=60).status_code == 403
    finally:
        control.remove_tenant(tenant)
        control.remove_tenant(other)
        for name in (tenant, other):
            registry.remove(name)
        if store.stored_sha256(base_key(digest)) != digest:  # the other tests' shared base, whatever happened
            publish_base(store, base)


RAY_CLIENT_DRIVER = """
import json, sys
import ray
from resources.stores import ServingResource
config, token_path = json.loads(sys.argv[1]), sys.argv[2]
if sys.argv[3:] == ["first-client-server-dies"]:
    # as Ray's client proxy reports a per-driver server that died starting (ray-project/ray#63202)
    real_init, calls = ray.init, []
    def init(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionAbortedError("Initialization failure from server: RuntimeError: Starting Ray "
                                         "client server failed. See ray_client_server_23000.err")
        return real_init(*args, **kwargs)
    ray.init = init
# the platform's own resource, as a pod builds it: only the address (ray://) and token file differ
control = ServingResource(**{**config, "ray_auth_token_path": token_path}).control()
control.ensure_router()  # a whole control-plane pass: Serve's status, reconcile, every router re-reading
print(json.dumps({"applications": control.applications(), "routers": sorted(control.routers())}))
"""


def test_the_platform_drives_serve_through_the_ray_client(control, serving, services):
    """In a cluster the platform's pods reach Ray through the Ray Client (DATACREEK_RAY_ADDRESS
    = ray://..., token-authenticated): a control-plane pass made through it, in a process of
    its own (one driver per process), sees and drives the same Serve. The driver is configured
    exactly as this session's serving (retrieval folder, model source, replicas): a pass made with
    other settings would redeploy the router differently for the tests after it."""
    import json
    import subprocess
    import sys

    from datacreek_assets.local_services import RayService

    head = RayService(services)
    config = json.dumps({**serving.model_dump(), "ray_address": f"ray://127.0.0.1:{head.client_port}"})
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    # the driver's first client server dies starting, as Ray's sometimes do: the platform tries again
    done = subprocess.run([sys.executable, "-c", RAY_CLIENT_DRIVER, config, serving.ray_auth_token_path,
                           "first-client-server-dies"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "did not start (attempt 1 of 5)" in done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    # (a replica replaced a moment ago may still be listed for a few seconds: at least as many)
    assert seen["applications"]["router"] == "RUNNING" and len(seen["routers"]) >= serving.router_replicas, seen
    # the same Serve as this driver sees directly (pools are never deleted; statuses may move on)
    assert set(seen["applications"]) <= set(control.applications()), seen
    # a wrong token is refused by the client server
    wrong = services.state_dir / "wrong-ray-token"
    wrong.write_text("0" * 64)
    refused = subprocess.run([sys.executable, "-c", RAY_CLIENT_DRIVER, config, str(wrong)],
                             capture_output=True, text=True, timeout=300, env=env)
    assert refused.returncode != 0 and "router" not in refused.stdout
