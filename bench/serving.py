"""Serving on a real Ray Serve (a Ray head started for the benchmark, on its own ports), with the
tiny random Llama's GGUF files (base + LoRA adapter through llama.cpp, one thread per replica).

1. Router overhead: one chat completion (max_tokens 2), sent one after another through the
   HTTP proxy and a router replica (key lookup, split, samples for RouterStats), against the same
   request made directly on the deployment through a Serve DeploymentHandle from this process.
   The notes give p50/p99 of both and the router's share.
2. Rollback time at RATE requests/s with 5 % to the canary: from the moment the canary's
   injected +400 ms latency is live to the canary removed (recorded, traffic off on every
   router replica). Two router replicas share the traffic, as shipped. Candidate: the canary
   health loop as shipped (the exact sliding window over both replicas' samples, RouterStats),
   ticking every second. Baseline: the same loop judging p99s from Prometheus histograms (scrape every
   second, histogram_quantile over rate[30s]), as a Prometheus-driven canary controller does.
3. Many tenants end to end: FLEET_TENANTS tenants, each with its own adapter in production and
   another as a 5 % canary, all served by one replica of one base pool (adapters swapped per
   request, the least recently used evicted past 32), asked in turn through the router; against
   the same requests from one tenant. The notes give p50/p99 of both and the pool replica's RSS.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.harness import Comparison

RATE = 20.0  # requests/s of client traffic in the rollback drill
SPIKE_S = 0.4
WARMUP_S = 10.0
TICK_S = 1.0
RAY_PORT, SERVE_PORT = 26390, 28100
FLEET_TENANTS = 50

_state: dict = {}


def _percentiles(values: list[float]) -> tuple[float, float]:
    from datacreek_assets.serving.routing import percentile

    return percentile(values, 50) * 1000, percentile(values, 99) * 1000


def comparisons(quick: bool = False) -> list[Comparison]:
    import requests

    from datacreek_assets.billing.prometheus import PrometheusServer
    from datacreek_assets.finetune.fixtures import random_adapter_release
    from datacreek_assets.local_services import RayService, free_port
    from datacreek_assets.serving.routing import CanaryPolicy, WindowStats, judge_canary
    from datacreek_assets.serving.traffic import TrafficGenerator
    from datacreek_assets.settings import LocalSettings
    from resources.stores import ObjectStoreResource, ServingResource

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    settings = LocalSettings(state_dir=work, ray_port=RAY_PORT, serve_port=SERVE_PORT)
    base, adapters = random_adapter_release(settings.download_cache / "models", work / "gguf", adapters=1)
    ray_head = RayService(settings)
    ray_head.up(180, lambda m: None)
    serving = ServingResource(ray_address=f"127.0.0.1:{RAY_PORT}", http_port=SERVE_PORT, store_url=settings.serving_url,
                              admin_token=settings.serving_admin_token(),
                              ray_auth_token_path=str(ray_head.auth_token_path), min_requests=8,
                              object_store=ObjectStoreResource(backend="local", root=str(work / "objects")),
                              model_cache_dir=str(work / "model-cache"))
    control = serving.control()
    control.ensure_router()
    prometheus = PrometheusServer(work / "prometheus", free_port(), [f"127.0.0.1:{SERVE_PORT}"],
                                  job="datacreek-serving", bearer_token=settings.serving_admin_token()).__enter__()
    _state.update(work=work, ray_head=ray_head, control=control, prometheus=prometheus)
    policy = CanaryPolicy(min_requests=8, max_p99_ratio=2.0, promote_after_s=3600, promote_min_requests=10**9)

    # -- 1. router overhead ------------------------------------------------------------------
    from ray import serve

    control.release_canary("bench-router", "v1", str(base), str(adapters[0]), str(base), 0.0)
    _, key = control.store.issue_key("bench-router")
    payload = {"messages": [{"role": "user", "content": "What does the json module provide?"}], "max_tokens": 2,
               "temperature": 0.0}
    from datacreek_assets.serving.pool_server import AdapterServer, pool_name

    base_release = control.store.release("bench-router", "base")
    handle = serve.get_deployment_handle(AdapterServer.name, app_name=pool_name(base_release.model.sha256))
    direct_payload = {**payload, "tenant": "bench-router", "version": "base"}
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {key}"})
    n = 60 if quick else 300
    latencies: dict[str, list[float]] = {"router": [], "direct": []}

    def through_router() -> int:
        for i in range(n):
            started = time.perf_counter()
            reply = session.post(f"{control.url}/v1/chat/completions", json=payload, timeout=30)
            latencies["router"].append(time.perf_counter() - started)
            assert reply.status_code == 200 and reply.headers["X-Served-By"] == "bench-router-base"
        return n

    def direct() -> int:
        for i in range(n):
            started = time.perf_counter()
            reply = handle.remote(direct_payload).result()
            latencies["direct"].append(time.perf_counter() - started)
            assert reply["model"] == "bench-router-base"
        return n

    def overhead_notes() -> str:
        r50, r99 = _percentiles(latencies["router"])
        d50, d99 = _percentiles(latencies["direct"])
        return (f"through the router p50 {r50:.2f} ms / p99 {r99:.2f} ms; direct handle call p50 {d50:.2f} ms / "
                f"p99 {d99:.2f} ms; router overhead p50 {r50 - d50:.2f} ms, p99 {r99 - d99:.2f} ms "
                f"({len(latencies['router'])} requests each, sequential)")

    # -- 2. rollback time ----------------------------------------------------------------------
    drill: dict = {"round": 0, "phases": {"window": [], "prometheus": []}}

    def arm() -> None:
        """Untimed: a fresh tenant with base as production and v1 as 5 % canary, and warm traffic
        on both sides."""
        if "tenant" in drill:
            drill["traffic"].stop()
            control.remove_tenant(drill["tenant"])
        drill["round"] += 1
        tenant = drill["tenant"] = f"bench-rb-{drill['round']}"
        control.release_canary(tenant, "v1", str(base), str(adapters[0]), str(base), 0.05)
        _, tenant_key = control.store.issue_key(tenant)
        drill["traffic"] = TrafficGenerator(control.url, tenant_key, RATE, prefix=f"rb{drill['round']}").start()
        time.sleep(WARMUP_S)

    def spike() -> float:
        """Timed from here: the spike is recorded and the router adds it to the canary's requests."""
        started = time.perf_counter()
        control.inject_delay(drill["tenant"], "v1", SPIKE_S)
        drill["rolled_out"] = time.perf_counter() - started
        return started

    def finish(kind: str, started: float, traffic_off: float) -> int:
        now = time.perf_counter()
        drill["phases"][kind].append((drill["rolled_out"], traffic_off - started, now - started))
        drill["traffic"].stop()
        assert control.store.release(drill["tenant"], "v1").status == "rolled_back"
        return 1

    def window_loop() -> int:
        started = spike()
        while True:
            acted = [o for o in control.check_canaries(policy) if o.acted]
            if acted:
                removed_at = time.perf_counter()
                off = removed_at - acted[0].timings_s["removed_s"] + acted[0].timings_s["traffic_off_s"]
                return finish("window", started, off)
            time.sleep(TICK_S)

    def prometheus_side(tenant: str) -> dict[str, WindowStats]:
        p99 = {r["metric"]["role"]: float(r["value"][1]) for r in prometheus.query(
            f'histogram_quantile(0.99, sum by (le, role) (rate(datacreek_serving_request_seconds_bucket'
            f'{{tenant="{tenant}"}}[30s])))')}
        count = {r["metric"]["role"]: float(r["value"][1]) for r in prometheus.query(
            f'sum by (role) (increase(datacreek_serving_request_seconds_count{{tenant="{tenant}"}}[30s]))')}
        return {role: WindowStats(int(count.get(role, 0)), None, p99.get(role)) for role in ("canary", "production")}

    def prometheus_loop() -> int:
        started = spike()
        tenant = drill["tenant"]
        while True:
            sides = prometheus_side(tenant)
            if all(s.p99_s is not None and s.p99_s == s.p99_s for s in sides.values()):  # NaN: no samples yet
                verdict = judge_canary(sides["canary"], sides["production"], sides["canary"].count, 0, policy)
                if verdict.action == "rollback":
                    timings = control.rollback(tenant, "v1", verdict.reason, verdict.numbers())
                    off = time.perf_counter() - timings["removed_s"] + timings["traffic_off_s"]
                    return finish("prometheus", started, off)
            time.sleep(TICK_S)

    def rollback_notes() -> str:
        def summary(kind: str) -> str:
            phases = drill["phases"][kind]
            rollout, off, removed = (statistics.median(p[i] for p in phases) for i in range(3))
            return (f"{kind}: median spike roll-out {rollout:.2f} s, traffic off the canary {off:.2f} s, "
                    f"out of every route {removed:.2f} s after the spike started")

        return (f"at {RATE:g} requests/s through {control.router_replicas} router replicas (5 % canary, "
                f"+{SPIKE_S * 1000:.0f} ms spike, tick {TICK_S:g} s, "
                f"{len(drill['phases']['window'])} rounds each); {summary('window')}; {summary('prometheus')}; "
                f"KPI: under 120 s")

    # -- 3. many tenants through Serve -----------------------------------------------------------
    many: dict = {"tenants": [], "latencies": {"fleet": [], "one": []}}
    fleet_size = 10 if quick else FLEET_TENANTS

    def fleet() -> None:
        """Untimed, once: each tenant with its own adapter in production (v1, promoted) and
        another as a 5 % canary (v2), all on the one base pool, and an API key each."""
        if many["tenants"]:
            return
        for i in range(fleet_size):
            tenant = f"bench-fleet-{i}"
            control.release_canary(tenant, "v1", str(base), str(fleet_adapters[i % len(fleet_adapters)]), str(base),
                                   0.05)
            control.promote(tenant, "v1", "benchmark fleet", {})
            control.release_canary(tenant, "v2", str(base), str(fleet_adapters[(i + 1) % len(fleet_adapters)]),
                                   str(base), 0.05)
            many["tenants"].append((tenant, control.store.issue_key(tenant)[1]))

    def ask_fleet(order: list[tuple[str, str]], into: list[float]) -> int:
        for i, (tenant, tenant_key) in enumerate(order):
            started = time.perf_counter()
            reply = session.post(f"{control.url}/v1/chat/completions", json=payload, timeout=60,
                                 headers={"Authorization": f"Bearer {tenant_key}", "X-Request-Id": f"fleet-{i}"})
            into.append(time.perf_counter() - started)
            assert reply.status_code == 200 and reply.headers["X-Served-By"].startswith(f"{tenant}-")
        return len(order)

    def every_tenant() -> int:
        order = [many["tenants"][i % len(many["tenants"])] for i in range(n)]
        return ask_fleet(order, many["latencies"]["fleet"])

    def one_tenant() -> int:
        return ask_fleet([many["tenants"][0]] * n, many["latencies"]["one"])

    def fleet_notes() -> str:
        import psutil

        f50, f99 = _percentiles(many["latencies"]["fleet"])
        o50, o99 = _percentiles(many["latencies"]["one"])
        pool_rss = sum(proc.info["memory_info"].rss for proc in psutil.process_iter(["cmdline", "memory_info"])
                       if "ServeReplica:pool-" in " ".join(proc.info["cmdline"] or []))
        return (f"{len(many['tenants'])} tenants x (production + 5 % canary), {2 * len(many['tenants'])} adapters "
                f"on one pool replica (LRU of 32): p50 {f50:.2f} ms / p99 {f99:.2f} ms against one tenant's "
                f"p50 {o50:.2f} ms / p99 {o99:.2f} ms (p99 {f99 / o99:.2f}x); pool replica RSS "
                f"{pool_rss / 2**20:.0f} MiB; {len(many['latencies']['fleet'])} requests each, sequential, "
                f"through the router")

    fleet_adapters = random_adapter_release(settings.download_cache / "models", work / "fleet", adapters=8, seed=7)[1]

    rounds = 1 if quick else 3
    return [
        Comparison("serving: router vs direct deployment call", through_router, direct, unit="requests",
                   repeats=rounds, notes=overhead_notes),
        Comparison("serving: canary rollback, router window vs Prometheus", window_loop, prometheus_loop,
                   unit="rollbacks", repeats=rounds, setup=arm, notes=rollback_notes),
        Comparison(f"serving: {fleet_size} tenants' adapters on one base pool vs one tenant", every_tenant,
                   one_tenant, unit="requests", repeats=rounds, setup=fleet, notes=fleet_notes),
    ]


def teardown() -> None:
    import ray

    control = _state.get("control")
    if control is not None:
        control.close()
    if "prometheus" in _state:
        _state["prometheus"].__exit__(None, None, None)
    if ray.is_initialized():
        ray.shutdown()
    if "ray_head" in _state:
        _state["ray_head"].down(lambda m: None)
    if "work" in _state:
        shutil.rmtree(_state["work"], ignore_errors=True)
    _state.clear()
