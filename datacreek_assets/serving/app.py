"""The Ray Serve applications: one `AdapterServer` pool per base model (`pool-<digest>`), which
serves every tenant's versions of that base with each tenant's LoRA adapter set per request,
and the `Router` ingress that authenticates, routes and measures.

Every request enters through the router: the API key names the tenant (an `X-Tenant` header
that disagrees is refused), `X-Model-Version` pins one of the tenant's live versions, and an
unpinned request goes to the canary when the hash of its request id falls in the canary's
share. Unless `X-Retrieval: off`, the last user turn is grounded first: the tenant's own
retrieval index (the one its API key names, never another's) gives the top passages for it,
which go into the prompt as the model was trained to read them. Latency per deployment goes to a sliding window (what the canary health sensor reads
through the admin API) and to Prometheus histograms (`/metrics`).
"""

# no `from __future__ import annotations`: FastAPI must see the real types of the handlers' parameters
import asyncio
import hmac
import threading
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve

from datacreek_assets.api_errors import error
from datacreek_assets.serving.adapter_pool import DEFAULT_CAPACITY
from datacreek_assets.serving.routing import InvalidVersion, LatencyWindow, validate_version
from datacreek_assets.tenancy import InvalidTenantId

MAX_BODY_BYTES = 64 * 1024
KEY_CACHE_S = 5.0  # a revoked key stops working within this many seconds
MAX_CACHED_KEYS = 10_000
RETRIEVAL_CHECK_S = 5.0  # how often a tenant's index pointer is re-read (a rebuilt index is served within this)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(pattern="^(system|user|assistant)$")
    content: str = Field(max_length=MAX_BODY_BYTES)


class ChatRequest(BaseModel):
    """The OpenAI chat-completions body (the subset a small served model honours). `model` is
    informational: the API key picks the tenant and `X-Model-Version` pins a version."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    max_tokens: int = Field(default=64, ge=1, le=512)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    stop: list[str] | None = Field(default=None, max_length=4)


async def read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None once it passes ``limit`` bytes: a chunked body (no Content-Length) is
    counted while it streams, never read whole first."""
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            return None
        parts.append(part)
    return b"".join(parts)


POOL_PREFIX = "pool-"
LIVE_CHECK_S = 5.0  # how often a base pool's replicas drop the adapters of versions no longer live
LOAD_GRACE_S = 10.0  # an adapter with no release record stays this long: its release may be being recorded


def pool_name(base_sha256: str) -> str:
    """The Serve application of the base pool for a base model's digest: `pool-<16 hex>`."""
    return f"{POOL_PREFIX}{base_sha256[:16]}"


def adapter_model_id(tenant: str, version: str, adapter) -> str:
    """Serve's multiplexed model id of a release's adapter: all a replica needs to fetch it (the
    key follows from tenant and digest) and all the router needs to pick a replica that has it."""
    return f"{tenant}/{version}/{adapter.sha256}/{adapter.size}"


def parse_adapter_model_id(model_id: str):
    """(tenant, version, ModelRef of the tenant's adapter) of a multiplexed model id."""
    from datacreek_assets.serving.model_files import ModelRef, adapter_key
    from datacreek_assets.serving.routing import validate_version
    from datacreek_assets.tenancy import validate_tenant_id

    tenant, version, sha256, size = model_id.split("/")
    return (validate_tenant_id(tenant), validate_version(version),
            ModelRef(adapter_key(tenant, sha256), sha256, int(size)))


class LoadedAdapter:
    """What Serve's multiplexer holds for an adapter: when it drops it from its least recently
    used set, the adapter is freed from the pool."""

    def __init__(self, pool, adapter):
        self.pool, self.file, self.freed = pool, adapter, False

    def __del__(self):
        # Serve calls this in an executor when it unloads the adapter, and the interpreter again
        # when the object goes: only the first may wait for the pool's lock
        if self.freed:
            return
        self.freed = True
        try:
            self.pool.evict(self.file)
        except Exception:  # the replica is shutting down: its context goes with it
            pass


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=8, health_check_period_s=2.0,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 2})
class AdapterServer:
    """Every tenant's versions of one base model: the base GGUF loaded once per replica, each
    tenant's adapter loaded on demand (Serve's model multiplexing sends a request to a replica
    that has its adapter when one has it) and set for its request alone (`AdapterPool`). Files
    are fetched from the object store into the node's cache and checked against the release's
    SHA-256 first: a mismatch fails that request, or the replica for the base, and nothing
    unchecked is ever served. Replicas drop the adapters of versions the release store no longer
    lists as live (a rollback): the router stops routing to them first."""

    def __init__(self, model: dict, source: dict, store_url: str, n_ctx: int = 2048, threads: int = 1):
        from datacreek_assets.serving.adapter_pool import AdapterPool
        from datacreek_assets.serving.model_files import ModelRef, ModelSource
        from datacreek_assets.serving.release_store import ServingStore, replica_store_url

        self.cache = ModelSource(**source).cache()
        self.base_path = self.cache.fetch_base(ModelRef.from_dict(model))
        self.pool = AdapterPool(self.base_path, n_ctx=n_ctx, threads=threads)
        self.store = ServingStore(replica_store_url(store_url))
        self.touched = self.swept = self.live_checked = time.monotonic()
        # warm up (first evaluation allocates buffers): the first client must not pay for it,
        # nor the canary's latency window count it
        self.pool.warm_up()

    @serve.multiplexed(max_num_models_per_replica=DEFAULT_CAPACITY)
    async def adapter(self, model_id: str) -> LoadedAdapter:
        return LoadedAdapter(self.pool, await asyncio.to_thread(self._load, model_id))

    def _load(self, model_id: str):
        """The adapter of a multiplexed model id, fetched (the tenant's own key, its digest
        checked) and loaded; refused for a version that was rolled back or retired, whatever a
        stale router asks (no release yet: one being deployed, loaded before it is recorded)."""
        from datacreek_assets.serving.adapter_pool import AdapterError, AdapterFile
        from datacreek_assets.serving.release_store import LIVE

        tenant, version, ref = parse_adapter_model_id(model_id)
        release = self.store.release(tenant, version)
        if release is not None and release.status not in LIVE:
            raise AdapterError(f"{tenant}-{version} is {release.status}: its adapter is not served")
        adapter = AdapterFile(tenant, version, ref.sha256, self.cache.fetch(ref, tenant))
        self.pool.load(adapter)
        return adapter

    async def check_health(self) -> None:
        """Serve's periodic health check. It also drops the adapters of ended releases, keeps this
        replica's files marked in use in the node's cache and sweeps the cache now and then
        (off the event loop: a completion holding the pool must not hold up requests' routing)."""
        await asyncio.to_thread(self._housekeeping)

    def _housekeeping(self) -> None:
        from datacreek_assets.serving.model_files import SWEEP_EVERY_S, TOUCH_EVERY_S

        now = time.monotonic()
        if now - self.live_checked > LIVE_CHECK_S:
            self.live_checked = now
            try:
                live = {(r.tenant_id, r.version) for r in self.store.live_releases()}
            except Exception:  # the store, not this replica: its adapters stay until it answers
                live = None
            if live is not None:
                self._drop_ended(live)
        if now - self.touched > TOUCH_EVERY_S:
            self.touched = now
            self.cache.touch([self.base_path, *(a.path for a in self.pool.loaded_adapters())])
        if now - self.swept > SWEEP_EVERY_S:
            self.swept = now
            try:
                self.cache.sweep()
            except OSError:  # the cache's disk, not this replica: the replica stays healthy
                pass

    def _drop_ended(self, live: set[tuple[str, str]]) -> None:
        """Free the adapters of versions no longer live: a version with a record that says so
        (rolled back, retired) at once, one with no record (a removed tenant's, or one being
        released right now) after LOAD_GRACE_S."""
        from datacreek_assets.serving.release_store import LIVE

        pending = {(a.tenant, a.version) for a in self.pool.loaded_adapters()} - live
        try:
            ended = {pair for pair in pending
                     if (release := self.store.release(*pair)) is not None and release.status not in LIVE}
        except Exception:  # the store: the grace period alone decides
            ended = set()
        if pending:
            self.pool.evict_ended(live, LOAD_GRACE_S, ended)

    def loaded(self) -> list[tuple[str, str]]:
        """(tenant, version) of the adapters this replica holds."""
        return [(a.tenant, a.version) for a in self.pool.loaded_adapters()]

    async def __call__(self, request: dict) -> dict:
        """``request``: the chat completion plus the tenant and version it is for (the router's);
        the adapter comes from the request's multiplexed model id, and must be that version's."""
        from ray.serve import get_multiplexed_model_id

        tenant, version = request["tenant"], request["version"]
        adapter = None
        model_id = get_multiplexed_model_id()
        if model_id:
            adapter = (await self.adapter(model_id)).file
            if (adapter.tenant, adapter.version) != (tenant, version):
                raise ValueError(f"the adapter of {adapter.name} was asked for {tenant}-{version}")
            if not self.pool.is_loaded(adapter):  # dropped (its release ended) since Serve cached it
                adapter = await asyncio.to_thread(self._load, model_id)
        return await asyncio.to_thread(self._complete, tenant, version, request, adapter)

    def _complete(self, tenant: str, version: str, request: dict, adapter) -> dict:
        from datacreek_assets.serving.adapter_pool import PromptTooLong

        try:
            # load=False: an adapter dropped between the check above and now is refused, not reloaded
            reply = self.pool.complete(tenant, request, adapter, load=False)
        except PromptTooLong as err:
            return {"error": {"type": "prompt_too_long", "message": str(err)}}
        reply["model"] = f"{tenant}-{version}"
        return reply


api = FastAPI(title="Datacreek serving", docs_url=None, redoc_url=None)


@serve.deployment(ray_actor_options={"num_cpus": 0}, num_replicas=1, max_ongoing_requests=256)
@serve.ingress(api)
class Router:
    """The ingress. One replica: its latency windows are what the canary sensor judges by."""

    def __init__(self, store_url: str, admin_token: str, window_s: float = 60.0, max_prompt_chars: int = 8000,
                 models_dir: str = "", retrieval_k: int = 3):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        from datacreek_assets.serving.release_store import ServingStore, replica_store_url

        if len(admin_token) < 16:
            raise ValueError("the serving admin token must have at least 16 characters")
        self.store = ServingStore(replica_store_url(store_url))
        self.admin_token = admin_token
        self.window_s = window_s
        self.max_prompt_chars = max_prompt_chars
        self.routes = self.store.all_routes()
        # (tenant, version) -> its live release: which base pool and adapter serve it
        self.releases = {(r.tenant_id, r.version): r for r in self.store.live_releases()}
        self.models_dir = models_dir  # where each tenant's retrieval index lives (empty: no retrieval)
        self.retrieval_k = retrieval_k
        self.indexes: dict[str, tuple[float, str | None, object]] = {}  # tenant -> (checked at, version, index)
        self.embed_lock = threading.Lock()
        if models_dir:  # load the embedder now: the first grounded request must not pay ~5 s for it
            from datacreek_assets.embeddings.embedder import embed_one

            embed_one("warm up")
        self.windows: dict[tuple[str, str], LatencyWindow] = {}
        self.canary_totals: dict[tuple[str, str], int] = {}
        self.keys: dict[str, tuple[str | None, float]] = {}
        self.handles: dict[str, object] = {}
        self.registry = CollectorRegistry()
        self.latency = Histogram("datacreek_serving_request_seconds", "Request latency per deployment, as the "
                                 "router sees it", ["tenant", "deployment", "role"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.requests = Counter("datacreek_serving_requests", "Requests per deployment and HTTP status",
                                ["tenant", "deployment", "role", "code"], registry=self.registry)
        self.weight = Gauge("datacreek_serving_canary_weight", "Share of a tenant's traffic sent to its canary",
                            ["tenant"], registry=self.registry)
        self.retrieval_latency = Histogram("datacreek_serving_retrieval_seconds", "Time to ground a request: "
                                           "embed the question and search the tenant's index", ["tenant"],
                                           buckets=LATENCY_BUCKETS, registry=self.registry)
        for tenant, route in self.routes.items():
            self.weight.labels(tenant).set(route.canary_weight)

    # -- tenants' API -----------------------------------------------------
    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        tenant = await self._tenant_of(request)
        if tenant is None:
            return error(401, "unauthorized", "missing or invalid API key (Authorization: Bearer <key>)",
                         {"WWW-Authenticate": "Bearer"})
        claimed = request.headers.get("x-tenant")
        if claimed is not None and claimed != tenant:
            return error(403, "forbidden", "the X-Tenant header does not match the API key's tenant")
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit():
            return error(400, "invalid_request", "Content-Length is not a number")
        if int(declared) > MAX_BODY_BYTES:  # refused before it is read
            return error(413, "request_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
        raw = await read_capped(request, MAX_BODY_BYTES)
        if raw is None:
            return error(413, "request_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
        try:
            body = ChatRequest.model_validate_json(raw)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                                 for e in err.errors()[:5])
            return error(422, "invalid_request", f"malformed chat completion request: {problems}")
        if sum(len(m.content) for m in body.messages) > self.max_prompt_chars:
            return error(413, "prompt_too_long", f"the messages exceed {self.max_prompt_chars} characters")
        route = self.routes.get(tenant)
        if route is None:
            return error(404, "no_model", "no model is released for this tenant yet")
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        if len(request_id) > 128 or not request_id.isprintable():
            return error(400, "invalid_request", "X-Request-Id must be at most 128 printable characters")
        pinned = request.headers.get("x-model-version")
        if pinned is not None:
            try:
                validate_version(pinned)
            except InvalidVersion as err:
                return error(400, "invalid_request", str(err))
            if pinned not in route.live:
                return error(404, "unknown_version", f"model version {pinned} is not served for this tenant")
            version, role = pinned, ("canary" if pinned == route.canary else "production")
        else:
            version, role = route.choose(tenant, request_id)
        retrieval = request.headers.get("x-retrieval", "on").lower()
        if retrieval not in ("on", "off"):
            return error(400, "invalid_request", "X-Retrieval must be 'on' or 'off'")
        grounding = await self._ground(tenant, body) if retrieval == "on" else {"status": "off", "chunks": []}
        return await self._forward(tenant, version, role, body, grounding, judged=pinned is None)

    async def _ground(self, tenant: str, body: ChatRequest) -> dict:
        """Put the tenant's top passages for the last user turn into it; returns what was done."""
        from datacreek_assets.retrieval.prompt import with_context

        question = next((m.content for m in reversed(body.messages) if m.role == "user"), "")
        index = await asyncio.to_thread(self._index_of, tenant)
        if index is None or not len(index) or not question.strip():
            return {"status": "unavailable", "chunks": []}
        started = time.perf_counter()
        passages, seconds = await asyncio.to_thread(self._search, index, question)
        self.retrieval_latency.labels(tenant).observe(seconds)
        grounded = with_context([m.model_dump() for m in body.messages], [p.text for p in passages])
        body.messages = [ChatMessage(**m) for m in grounded]
        return {"status": "on", "ms": round(seconds * 1000, 2), "waited_ms": round((time.perf_counter() - started) * 1000, 2),
                "chunks": [{"chunk_id": p.chunk_id, "doc_id": p.doc_id, "score": round(p.score, 4)} for p in passages]}

    def _search(self, index, question: str):
        """(passages, seconds of work): embedding and search, not the wait for the embedder."""
        from datacreek_assets.embeddings.embedder import embed_one

        with self.embed_lock:  # one embedder, one thread: requests take turns, as llama.cpp's do
            started = time.perf_counter()
            vector = embed_one(question)
        passages = index.search(vector, self.retrieval_k)
        return passages, time.perf_counter() - started

    def _index_of(self, tenant: str):
        """The tenant's current index: its own folder, named by the tenant its API key belongs to."""
        from pathlib import Path

        from datacreek_assets.retrieval.index import RetrievalError, current_version, load_current
        from datacreek_assets.tenancy import validate_tenant_id

        if not self.models_dir:
            return None
        checked, version, index = self.indexes.get(tenant, (0.0, None, None))
        if time.monotonic() - checked < RETRIEVAL_CHECK_S:
            return index
        folder = Path(self.models_dir) / "tenants" / validate_tenant_id(tenant) / "retrieval"
        latest = current_version(folder)
        if latest != version:
            try:
                index = load_current(folder, tenant)
            except RetrievalError:
                index = None  # a broken index is not served; the request goes on without passages
            version = latest
        self.indexes[tenant] = (time.monotonic(), version, index)
        return index

    async def _forward(self, tenant: str, version: str, role: str, body: ChatRequest, grounding: dict,
                       judged: bool = True):
        """``judged``: the request came through the split, so the canary verdict counts it. A request
        pinned with X-Model-Version (an evaluation, a client's test) is no sample of the split's
        traffic: it is in the metrics, not in the windows the canary is judged by."""
        name = f"{tenant}-{version}"
        release = self.releases.get((tenant, version))
        if release is None or release.model is None:  # recorded, files not yet published: the next reconcile
            self.requests.labels(tenant, name, role, "503").inc()
            return error(503, "unavailable", f"model {name} is not ready yet; retry")
        handle = self.handles.get(name)
        if handle is None:
            handle = serve.get_deployment_handle(AdapterServer.name, app_name=pool_name(release.model.sha256))
            if release.adapter is not None:  # to a replica that has the adapter loaded, when one has
                handle = handle.options(multiplexed_model_id=adapter_model_id(tenant, version, release.adapter))
            self.handles[name] = handle
        request = {**body.model_dump(exclude={"model"}), "tenant": tenant, "version": version}
        started = time.perf_counter()
        try:
            if release.injected_delay_s:  # a drill's fault: here, not on the pool shared with other tenants
                await asyncio.sleep(release.injected_delay_s)
            reply = await handle.remote(request)
        except Exception as err:  # the deployment failed or went away mid-request: no traceback to the client
            # a failure counts in the deployment's window: a canary that fails is judged for it
            if judged:
                self._window(tenant, version).add(time.perf_counter() - started, ok=False)
            self.requests.labels(tenant, name, role, "503").inc()
            return error(503, "unavailable", f"model {name} could not answer ({type(err).__name__}); retry")
        latency = time.perf_counter() - started
        # (Serve's proxy already puts the request id on the request and echoes it in the response)
        headers = {"X-Model-Version": version, "X-Served-By": name, "X-Release-Role": role,
                   "X-Retrieval": grounding["status"]}
        if "error" in reply:
            self.requests.labels(tenant, name, role, "413").inc()
            return error(413, reply["error"]["type"], "the prompt does not fit the model's context window", headers)
        if judged:
            self._window(tenant, version).add(latency)
        if judged and role == "canary":
            self.canary_totals[(tenant, version)] = self.canary_totals.get((tenant, version), 0) + 1
        self.latency.labels(tenant, name, role).observe(latency)
        self.requests.labels(tenant, name, role, "200").inc()
        reply["retrieval"] = grounding  # which of the tenant's chunks the answer was grounded in
        return JSONResponse(reply, headers=headers)

    def _window(self, tenant: str, version: str) -> LatencyWindow:
        return self.windows.setdefault((tenant, version), LatencyWindow(self.window_s))

    async def _tenant_of(self, request: Request) -> str | None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            return None
        cached = self.keys.get(key)
        if cached is not None and time.monotonic() - cached[1] < KEY_CACHE_S:
            return cached[0]
        # the store is a database: off the event loop, which every tenant's requests share
        tenant = await asyncio.to_thread(self.store.tenant_for_key, key)
        self.keys.pop(key, None)
        while len(self.keys) >= MAX_CACHED_KEYS:  # oldest first; unknown keys are cached too
            self.keys.pop(next(iter(self.keys)))
        self.keys[key] = (tenant, time.monotonic())
        return tenant

    # -- operators' API (admin token) ----------------------------------------
    def _admin(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), self.admin_token.encode())

    @api.post("/admin/v1/reload")
    async def reload_all(self, request: Request):
        """Re-read every route from the release store (the control plane's reconcile)."""
        if not self._admin(request):
            return error(401, "unauthorized", "admin token required")
        routes, releases = await asyncio.to_thread(lambda: (self.store.all_routes(), self.store.live_releases()))
        for tenant in set(self.routes) | set(routes):
            self._apply(tenant, routes.get(tenant), [r for r in releases if r.tenant_id == tenant])
        return {"tenants": len(self.routes)}

    @api.post("/admin/v1/tenants/{tenant}/reload")
    async def reload(self, tenant: str, request: Request):
        """Re-read a tenant's route from the release store (the control plane calls this after
        every change it records there)."""
        if not self._admin(request):
            return error(401, "unauthorized", "admin token required")
        try:
            route, live = await asyncio.to_thread(lambda: (self.store.route(tenant), self.store.live(tenant)))
        except InvalidTenantId as err:
            return error(400, "invalid_request", str(err))
        self._apply(tenant, route, list(live.values()))
        return {"tenant": tenant, "route": route.as_dict() if route else None}

    def _apply(self, tenant: str, route, releases: list) -> None:
        old = self.routes.get(tenant)
        if route is None:
            self.routes.pop(tenant, None)
        else:
            self.routes[tenant] = route
        before = {key: self.releases.pop(key) for key in [key for key in self.releases if key[0] == tenant]}
        for release in releases:
            key = (tenant, release.version)
            if key in before and (before[key].model, before[key].adapter) != (release.model, release.adapter):
                self.handles.pop(f"{tenant}-{release.version}", None)  # its files changed (a legacy release adopted)
            self.releases[key] = release
        live = set(route.live) if route else set()
        for version in set(old.live if old else ()) - live:  # a retired version's window and handle go
            self.windows.pop((tenant, version), None)
            self.canary_totals.pop((tenant, version), None)
            self.handles.pop(f"{tenant}-{version}", None)
        self.weight.labels(tenant).set(route.canary_weight if route else 0.0)

    @api.get("/admin/v1/tenants/{tenant}/window")
    async def window(self, tenant: str, request: Request):
        if not self._admin(request):
            return error(401, "unauthorized", "admin token required")
        route = self.routes.get(tenant)
        if route is None:
            return error(404, "no_model", "no live route for this tenant")
        sides = {}
        for role, version in (("production", route.production), ("canary", route.canary)):
            if version is None:
                continue
            stats = self.windows.get((tenant, version), LatencyWindow(self.window_s)).stats()
            sides[role] = {"version": version, "count": stats.count, "p50_s": stats.p50_s, "p99_s": stats.p99_s,
                           "errors": stats.errors,
                           "total": self.canary_totals.get((tenant, version), 0) if role == "canary" else None}
        return {"tenant": tenant, "window_s": self.window_s, "route": route.as_dict(), **sides}

    @api.get("/metrics")
    async def metrics(self, request: Request):
        if not self._admin(request):
            return error(401, "unauthorized", "admin token required")
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    @api.get("/healthz")
    async def healthz(self):
        return {"ok": True, "tenants": len(self.routes)}

