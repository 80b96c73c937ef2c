"""What every router replica measured, in one place: the canary's latency windows, the
Prometheus metrics of `/metrics`, and which router replicas are alive and how recently each
re-read the release store.

Several router replicas each see a share of a tenant's requests, so no replica's own window can
judge a canary, and a scrape of `/metrics` through Serve's proxy reaches one replica at random.
Each replica sends its samples here every `REPORT_EVERY_S` (`RouterStats.report`); the canary
sensor's window and Prometheus' scrape are answered from the sum. One replica of a few
dictionaries: it is off the request path (a router never waits for it to answer a client), and
a restart of it empties the windows, which then fill again as a restarted router's would.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ray import serve

from datacreek_assets.serving.routing import LatencyWindow

REPORT_EVERY_S = 0.5  # a router replica's report (its samples, its heartbeat): Serve's health-check period
ROUTER_STALE_S = 5.0  # a router replica not heard from for this long is gone (Serve replaces a dead one)
APPLIED_KEPT = 1000  # report numbers remembered per replica: a replica sends at most 240 again
APPLIED_FORGET_S = 600.0  # a replica silent this long is gone (redeployed): its numbers are forgotten
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class RequestSample:
    """One request a router replica answered or failed."""

    tenant: str
    version: str
    role: str  # production | canary
    code: int
    latency_s: float
    judged: bool  # through the canary split (a pinned request is in the metrics, not the windows)
    at: float  # when it was answered (epoch seconds, the router's clock)


# (no access log: each router replica reports twice a second)
@serve.deployment(ray_actor_options={"num_cpus": 0}, num_replicas=1, max_ongoing_requests=1000,
                  logging_config={"enable_access_log": False})
class RouterStats:
    def __init__(self, window_s: float):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.window_s = window_s
        self.windows: dict[tuple[str, str], LatencyWindow] = {}
        self.canary_totals: dict[tuple[str, str], int] = {}  # successful canary requests while live
        self.routers: dict[str, dict] = {}  # replica id -> heard (monotonic), routes_read_at (epoch s), samples
        self.applied: dict[str, dict[int, None]] = {}  # replica id -> numbers of its latest reports applied
        self.applied_heard: dict[str, float] = {}  # replica id -> when it last reported (monotonic)
        # Serve runs a plain method in a thread pool: two reports (or a report and a read) at once
        self.lock = threading.Lock()
        self.purged = time.monotonic()
        self.registry = CollectorRegistry()
        self.latency = Histogram("datacreek_serving_request_seconds", "Request latency per deployment, as the "
                                 "routers see it", ["tenant", "deployment", "role"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.requests = Counter("datacreek_serving_requests", "Requests per deployment and HTTP status",
                                ["tenant", "deployment", "role", "code"], registry=self.registry)
        self.weight = Gauge("datacreek_serving_canary_weight", "Share of a tenant's traffic sent to its canary",
                            ["tenant"], registry=self.registry)
        self.retrieval_latency = Histogram("datacreek_serving_retrieval_seconds", "Time to ground a request: "
                                           "embed the question and search the tenant's index", ["tenant"],
                                           buckets=LATENCY_BUCKETS, registry=self.registry)

    def report(self, router: str, routes_read_at: float, requests: list[RequestSample],
               retrievals: list[tuple[str, float]], weights: dict[str, float],
               retired: list[tuple[str, str]], number: int | None = None) -> None:
        """A router replica's samples since its last report, the canary weights it routes by,
        the versions it stopped routing, and when it last read the store (its heartbeat).
        ``number``: the replica's report number; a report sent again (its answer was lost) is
        applied once."""
        with self.lock:
            self._report(router, routes_read_at, requests, retrievals, weights, retired, number)

    def _report(self, router: str, routes_read_at: float, requests: list[RequestSample],
                retrievals: list[tuple[str, float]], weights: dict[str, float], retired: list[tuple[str, str]],
                number: int | None) -> None:
        now, wall = time.monotonic(), time.time()
        self.applied_heard[router] = now
        seen = self.routers.setdefault(router, {"samples": 0, "routes_read_at": 0.0})
        # (max: two reports of one replica may arrive out of order)
        seen.update(heard=now, routes_read_at=max(seen["routes_read_at"], routes_read_at))
        for tenant, weight in weights.items():
            self.weight.labels(tenant).set(weight)
        if number is not None:
            applied = self.applied.setdefault(router, {})
            if number in applied:
                return
            applied[number] = None
            while len(applied) > APPLIED_KEPT:
                del applied[next(iter(applied))]
        seen["samples"] += len(requests)
        for sample in requests:
            name = f"{sample.tenant}-{sample.version}"
            self.requests.labels(sample.tenant, name, sample.role, str(sample.code)).inc()
            if sample.code == 200:
                self.latency.labels(sample.tenant, name, sample.role).observe(sample.latency_s)
            # a failure counts in the window (a canary that fails is judged for it); a prompt too
            # long for the context is the client's, not the deployment's
            if sample.judged and sample.code in (200, 503):
                key = (sample.tenant, sample.version)
                if sample.code == 200 and sample.role == "canary":
                    self.canary_totals[key] = self.canary_totals.get(key, 0) + 1
                age = max(0.0, wall - sample.at)  # samples held back by an outage are as old as they are
                if age < self.window_s:
                    self.windows.setdefault(key, LatencyWindow(self.window_s)).add(sample.latency_s, now - age,
                                                                                 sample.code == 200)
        for tenant, seconds in retrievals:
            self.retrieval_latency.labels(tenant).observe(seconds)
        for key in retired:  # after the samples: a retired version's last ones go with it
            self.windows.pop(key, None)
            self.canary_totals.pop(key, None)
        if now - self.purged > self.window_s:  # windows nobody wrote to for a whole window
            self.purged = now
            for key in [k for k, w in self.windows.items() if not w.stats(now).count]:
                del self.windows[key]
            for gone in [r for r, heard in self.applied_heard.items() if now - heard > APPLIED_FORGET_S]:
                del self.applied_heard[gone]
                self.applied.pop(gone, None)

    def window(self, tenant: str, versions: list[str]) -> dict:
        """Each version's window over every router replica's samples."""
        with self.lock:
            return self._window(tenant, versions)

    def _window(self, tenant: str, versions: list[str]) -> dict:
        out = {}
        for version in versions:
            stats = self.windows.get((tenant, version), LatencyWindow(self.window_s)).stats()
            out[version] = {"count": stats.count, "p50_s": stats.p50_s, "p99_s": stats.p99_s, "errors": stats.errors,
                            "total": self.canary_totals.get((tenant, version), 0)}
        return {"window_s": self.window_s, "versions": out}

    def alive(self) -> dict[str, dict]:
        """The router replicas heard from lately: when each last read the store, how many
        requests it reported."""
        with self.lock:
            return self._alive()

    def _alive(self) -> dict[str, dict]:
        now = time.monotonic()
        for router in [r for r, seen in self.routers.items() if now - seen["heard"] > ROUTER_STALE_S]:
            del self.routers[router]  # (its applied numbers stay: one cut off for a while sends again)
        return {router: {"routes_read_at": seen["routes_read_at"], "samples": seen["samples"],
                         "heard_s_ago": round(now - seen["heard"], 3)} for router, seen in self.routers.items()}

    def metrics(self) -> str:
        from prometheus_client import generate_latest

        with self.lock:
            return generate_latest(self.registry).decode()
