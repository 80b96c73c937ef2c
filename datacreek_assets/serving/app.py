"""The Ray Serve application: one `ModelServer` deployment per (tenant, model version), named
`<tenant>-<version>`, and the `Router` ingress that authenticates, routes and measures.

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


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=8)
class ModelServer:
    """One tenant's model version: the GGUF through llama.cpp, with the tenant's adapter applied
    to the shared base file where the release is base + adapter. Both files are fetched from the
    object store into the node's cache and checked against the release's SHA-256 digests first
    (a mismatch fails the replica: nothing unchecked is ever served)."""

    def __init__(self, tenant: str, version: str, model: dict, adapter: dict | None, source: dict,
                 n_ctx: int = 2048, threads: int = 1):
        from llama_cpp import Llama

        from datacreek_assets.serving.model_files import ModelRef, ModelSource

        self.name = f"{tenant}-{version}"
        self.n_ctx = n_ctx
        refs = [ModelRef.from_dict(model)] + ([ModelRef.from_dict(adapter)] if adapter else [])
        self.cache = ModelSource(**source).cache()
        self.paths = self.cache.fetch_all(refs, tenant)
        self.touched = self.swept = time.monotonic()
        self.llm = Llama(model_path=str(self.paths[0]), lora_path=str(self.paths[1]) if adapter else None,
                         n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False, seed=0)
        self.lock = threading.Lock()  # one llama.cpp context: one generation at a time
        self.injected_delay_s = 0.0
        # warm up (first evaluation allocates buffers): the first client must not pay for it,
        # nor the canary's latency window count it
        self._complete({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2, "temperature": 0.0})

    def check_health(self) -> None:
        """Serve's periodic health check. It also keeps this replica's files marked in use in the
        node's cache (a file a replica runs on is never evicted, so never fetched again while it
        runs) and sweeps the cache now and then (idle files go on a node that starts nothing new)."""
        from datacreek_assets.serving.model_files import SWEEP_EVERY_S, TOUCH_EVERY_S

        now = time.monotonic()
        if now - self.touched > TOUCH_EVERY_S:
            self.touched = now
            self.cache.touch(self.paths)
        if now - self.swept > SWEEP_EVERY_S:
            self.swept = now
            try:
                self.cache.sweep()
            except OSError:  # the cache's disk, not this replica: the replica stays healthy
                pass

    def reconfigure(self, config: dict) -> None:
        # Fault injection for canary drills (the delay a slow release would add), set through the
        # deployment's user_config so every replica gets it without a restart.
        self.injected_delay_s = float(config.get("injected_delay_s", 0.0))

    async def __call__(self, request: dict) -> dict:
        if self.injected_delay_s:
            await asyncio.sleep(self.injected_delay_s)
        return await asyncio.to_thread(self._complete, request)

    def _complete(self, request: dict) -> dict:
        with self.lock:
            try:
                reply = self.llm.create_chat_completion(
                    messages=request["messages"], max_tokens=request["max_tokens"],
                    temperature=request["temperature"], stop=request.get("stop"), seed=0)
            except ValueError as err:  # llama.cpp: the prompt does not fit the context window
                return {"error": {"type": "prompt_too_long", "message": str(err)}}
        reply["model"] = self.name
        return reply


api = FastAPI(title="Datacreek serving", docs_url=None, redoc_url=None)


@serve.deployment(ray_actor_options={"num_cpus": 0}, num_replicas=1, max_ongoing_requests=256)
@serve.ingress(api)
class Router:
    """The ingress. One replica: its latency windows are what the canary sensor judges by."""

    def __init__(self, store_url: str, admin_token: str, window_s: float = 60.0, max_prompt_chars: int = 8000,
                 models_dir: str = "", retrieval_k: int = 3):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        from datacreek_assets.serving.release_store import ServingStore

        if len(admin_token) < 16:
            raise ValueError("the serving admin token must have at least 16 characters")
        self.store = ServingStore(store_url)
        self.admin_token = admin_token
        self.window_s = window_s
        self.max_prompt_chars = max_prompt_chars
        self.routes = self.store.all_routes()
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
        handle = self.handles.get(name)
        if handle is None:
            handle = self.handles[name] = serve.get_deployment_handle(name, app_name=name)
        started = time.perf_counter()
        try:
            reply = await handle.remote(body.model_dump(exclude={"model"}))
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
        routes = await asyncio.to_thread(self.store.all_routes)
        for tenant in set(self.routes) | set(routes):
            self._apply(tenant, routes.get(tenant))
        return {"tenants": len(self.routes)}

    @api.post("/admin/v1/tenants/{tenant}/reload")
    async def reload(self, tenant: str, request: Request):
        """Re-read a tenant's route from the release store (the control plane calls this after
        every change it records there)."""
        if not self._admin(request):
            return error(401, "unauthorized", "admin token required")
        try:
            route = await asyncio.to_thread(self.store.route, tenant)
        except InvalidTenantId as err:
            return error(400, "invalid_request", str(err))
        self._apply(tenant, route)
        return {"tenant": tenant, "route": route.as_dict() if route else None}

    def _apply(self, tenant: str, route) -> None:
        old = self.routes.get(tenant)
        if route is None:
            self.routes.pop(tenant, None)
        else:
            self.routes[tenant] = route
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

