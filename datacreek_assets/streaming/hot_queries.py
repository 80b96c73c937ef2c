"""Hot queries over a tenant's FalkorDB hot graph, in Python (`HotQueries`, bound to one validated
tenant) and over HTTP (`hot_query_app`, FastAPI). A tenant authenticates with its serving API key
(the key names the tenant; an `X-Tenant` naming another is refused); operators use the admin token
and name the tenant in the path. Every query runs inside that tenant's own graph.

`/metrics` exports `datacreek_hot_query_seconds{tenant,query}` and, read from the stream's state at
scrape time, `datacreek_stream_lag_seconds{tenant}` and the event-to-queryable latency histogram
`datacreek_stream_event_to_queryable_seconds{tenant}` the stream job counts."""

# no `from __future__ import annotations`: FastAPI must see the real types of the handlers' parameters
import asyncio
import hmac
import threading
import time
from datetime import datetime, timedelta, timezone

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

from datacreek_assets.api_errors import error
from datacreek_assets.hot_graph import LATENCY_BUCKETS, UnknownEntity
from datacreek_assets.streaming.windows import WINDOW_SECONDS, window_of
from datacreek_assets.tenancy import InvalidTenantId, validate_tenant_id

QUERY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MAX_WINDOWS = 2880  # a day of 30 s windows
STREAM_SCRAPE_CACHE_S = 10.0


class HotQueries:
    """One tenant's hot queries; each is timed into ``histogram`` (labels tenant, query) if given."""

    def __init__(self, store, tenant_id: str, histogram=None):
        self.store, self.tenant_id, self.histogram = store, validate_tenant_id(tenant_id), histogram

    def _timed(self, name: str, run):
        started = time.perf_counter()
        try:
            return run()
        finally:
            if self.histogram is not None:
                self.histogram.labels(self.tenant_id, name).observe(time.perf_counter() - started)

    def neighbours(self, entity: str, hops: int = 1, limit: int = 50) -> list[dict]:
        return self._timed(f"neighbours_{hops}hop", lambda: self.store.neighbours(self.tenant_id, entity, hops, limit))

    def recent_edges(self, windows: int = 1, limit: int = 100, now: datetime | None = None) -> list[dict]:
        """Edges written by the last ``windows`` windows (the current one included)."""
        now = now or datetime.now(timezone.utc)
        since = window_of(now - timedelta(seconds=WINDOW_SECONDS * (windows - 1)))
        return self._timed("recent_edges", lambda: self.store.recent_edges(self.tenant_id, since, limit))

    def top_pairs(self, limit: int = 20) -> list[dict]:
        return self._timed("top_pairs", lambda: self.store.top_pairs(self.tenant_id, limit))


class StreamCollector:
    """Prometheus collector: each tenant's stream lag and event-to-queryable latency, read from
    Kafka and the hot graphs at scrape time (cached a few seconds)."""

    def __init__(self, store, bootstrap_servers: str | None):
        self.store, self.bootstrap_servers = store, bootstrap_servers
        self.lock = threading.Lock()
        self.cached: tuple[float, list] = (0.0, [])

    def streams(self) -> list:
        from datacreek_assets.streaming.events import EventLogError
        from datacreek_assets.streaming.monitor import partition_lags, tenant_stream

        with self.lock:
            if time.monotonic() - self.cached[0] < STREAM_SCRAPE_CACHE_S:
                return self.cached[1]
            try:
                lags = partition_lags(self.bootstrap_servers, timeout_s=5) if self.bootstrap_servers else {}
            except EventLogError:
                lags = {}  # the lag series go missing rather than the scrape failing
            streams = [tenant_stream(self.store, t, lags) for t in self.store.tenants()]
            self.cached = (time.monotonic(), streams)
            return streams

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

        lag = GaugeMetricFamily("datacreek_stream_lag_seconds", "Age of the oldest graph event on the tenant's "
                                "partition that the stream job has not committed", labels=["tenant"])
        latency = HistogramMetricFamily("datacreek_stream_event_to_queryable_seconds", "From an event's time "
                                        "to its window written to the hot graph", labels=["tenant"])
        for stream in self.streams():
            lag.add_metric([stream.tenant_id], stream.lag_s)
            running, buckets = 0, []
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), stream.latency_counts):
                running += n
                buckets.append(("+Inf" if bound == float("inf") else str(bound), running))
            latency.add_metric([stream.tenant_id], buckets, stream.latency_sum_s)
        yield lag
        yield latency


def hot_query_app(store, key_store, admin_token: str, bootstrap_servers: str | None = None) -> FastAPI:
    """``store``: a HotGraphStore; ``key_store``: the serving store, whose API keys name tenants."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    if len(admin_token) < 16:
        raise ValueError("the admin token must have at least 16 characters")
    registry = CollectorRegistry()
    seconds = Histogram("datacreek_hot_query_seconds", "Hot query latency, as the API measures it",
                        ["tenant", "query"], buckets=QUERY_BUCKETS, registry=registry)
    registry.register(StreamCollector(store, bootstrap_servers))
    app = FastAPI(title="Datacreek hot queries", docs_url=None, redoc_url=None)

    async def tenant_of(request: Request) -> str | JSONResponse:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        tenant = await asyncio.to_thread(key_store.tenant_for_key, key) if scheme.lower() == "bearer" and key else None
        if tenant is None:
            return error(401, "unauthorized", "missing or invalid API key (Authorization: Bearer <key>)",
                         {"WWW-Authenticate": "Bearer"})
        claimed = request.headers.get("x-tenant")
        if claimed is not None and claimed != tenant:
            return error(403, "forbidden", "the X-Tenant header does not match the API key's tenant")
        return tenant

    def admin_tenant(request: Request, tenant: str) -> str | JSONResponse:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), admin_token.encode()):
            return error(401, "unauthorized", "admin token required")
        try:
            return validate_tenant_id(tenant)
        except InvalidTenantId as err:
            return error(400, "invalid_tenant", str(err))

    async def answer(tenant: str | JSONResponse, run) -> JSONResponse:
        if isinstance(tenant, JSONResponse):
            return tenant
        if not await asyncio.to_thread(store.scope_exists, tenant):
            return error(404, "no_hot_graph", "this tenant has no hot graph yet")
        try:
            rows = await asyncio.to_thread(run, HotQueries(store, tenant, seconds))
        except UnknownEntity as err:
            return error(404, "unknown_entity", str(err))
        return JSONResponse({"tenant": tenant, "results": rows})

    hops_q = Query(1, ge=1, le=2)
    limit_q = Query(50, ge=1, le=1000)
    windows_q = Query(1, ge=1, le=MAX_WINDOWS)
    entity_q = Query(..., min_length=1, max_length=500)

    @app.get("/v1/hot/neighbours")
    async def neighbours(request: Request, entity: str = entity_q, hops: int = hops_q, limit: int = limit_q):
        return await answer(await tenant_of(request), lambda q: q.neighbours(entity, hops, limit))

    @app.get("/v1/hot/recent-edges")
    async def recent_edges(request: Request, windows: int = windows_q, limit: int = limit_q):
        return await answer(await tenant_of(request), lambda q: q.recent_edges(windows, limit))

    @app.get("/v1/hot/top-pairs")
    async def top_pairs(request: Request, limit: int = limit_q):
        return await answer(await tenant_of(request), lambda q: q.top_pairs(limit))

    @app.get("/admin/v1/hot/{tenant}/neighbours")
    async def admin_neighbours(request: Request, tenant: str, entity: str = entity_q, hops: int = hops_q,
                               limit: int = limit_q):
        return await answer(admin_tenant(request, tenant), lambda q: q.neighbours(entity, hops, limit))

    @app.get("/admin/v1/hot/{tenant}/recent-edges")
    async def admin_recent_edges(request: Request, tenant: str, windows: int = windows_q, limit: int = limit_q):
        return await answer(admin_tenant(request, tenant), lambda q: q.recent_edges(windows, limit))

    @app.get("/admin/v1/hot/{tenant}/top-pairs")
    async def admin_top_pairs(request: Request, tenant: str, limit: int = limit_q):
        return await answer(admin_tenant(request, tenant), lambda q: q.top_pairs(limit))

    @app.get("/metrics")
    async def metrics():
        body = await asyncio.to_thread(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return app
