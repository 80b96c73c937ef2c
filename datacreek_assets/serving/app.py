"""The `router` Ray Serve application: the `Router` ingress that authenticates, routes and
measures, in front of the base pools (`pool_server`), and `RouterStats`, where its replicas'
measurements meet (`router_stats`).

Every request enters through the router: the API key names the tenant (an `X-Tenant` header
that disagrees is refused), `X-Model-Version` pins one of the tenant's live versions, and an
unpinned request goes to the canary when the hash of its request id falls in the canary's
share. Unless `X-Retrieval: off`, the last user turn is grounded first: the tenant's own
retrieval index (the one its API key names, never another's) gives the top passages for it,
which go into the prompt as the model was trained to read them. A grounded request at
temperature 0 is answered extractively (`retrieval/extractive.py`): with a span of those passages
or "Not in the documents.", unless `X-Extractive: off`.

The router runs as several replicas. At each of Serve's health checks (every `REPORT_EVERY_S`)
a replica reports its latencies and when it last read the store to `RouterStats`, which holds
the canary's windows over all replicas (what the canary health sensor reads through the admin
API) and the Prometheus metrics (`/metrics`), then re-reads the routes from the release store
(one query). The control plane's reload reaches one replica at once, the others at their next
read, and the control plane waits until all have (`ServingControl.reload_router`).
"""

# no `from __future__ import annotations`: FastAPI must see the real types of the handlers' parameters
import asyncio
import hmac
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve

from datacreek_assets.api_errors import error
from datacreek_assets.serving.adapter_pool import AdapterError
from datacreek_assets.serving.model_files import ModelFileError
from datacreek_assets.serving.pool_server import AdapterServer, adapter_model_id, pool_name
from datacreek_assets.serving.router_stats import REPORT_EVERY_S, RequestSample
from datacreek_assets.serving.routing import InvalidVersion, validate_version
from datacreek_assets.tenancy import InvalidTenantId, validate_tenant_id

MAX_BODY_BYTES = 64 * 1024
KEY_CACHE_S = 5.0  # a revoked key stops working within this many seconds
MAX_CACHED_KEYS = 10_000
RETRIEVAL_CHECK_S = 5.0  # how often a tenant's index pointer is re-read (a rebuilt index is served within this)
MAX_UNREPORTED = 100_000  # samples a replica keeps while RouterStats cannot be reached (then drops the oldest)
MAX_UNSENT_REPORTS = 240  # reports with samples kept to send again, each applied once by RouterStats
# each well under Serve's health-check timeout (30 s): a slow store or RouterStats restarting must
# not get every router replica restarted at once
REPORT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0


def stats_unavailable():
    return error(503, "unavailable", "the routers' measurements (RouterStats) cannot be reached now; retry")


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



api = FastAPI(title="Datacreek serving", docs_url=None, redoc_url=None)


@serve.deployment(ray_actor_options={"num_cpus": 0}, num_replicas=1, max_ongoing_requests=256,
                  health_check_period_s=REPORT_EVERY_S)
@serve.ingress(api)
class Router:
    """The ingress, one of several replicas (`ServingControl.router_replicas`)."""

    def __init__(self, store_url: str, admin_token: str, stats, max_prompt_chars: int = 8000,
                 models_dir: str = "", retrieval_k: int = 3):
        from datacreek_assets.serving.release_store import ServingStore, replica_store_url

        if len(admin_token) < 16:
            raise ValueError("the serving admin token must have at least 16 characters")
        self.store = ServingStore(replica_store_url(store_url))
        self.admin_token = admin_token
        self.stats = stats  # RouterStats: every replica's windows and metrics
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.max_prompt_chars = max_prompt_chars
        self.routes: dict = {}
        # (tenant, version) -> its live release: which base pool and adapter serve it
        self.releases: dict = {}
        self.handles: dict[str, object] = {}
        # what goes to RouterStats at the next report
        self.unreported: list[RequestSample] = []
        self.retrievals: list[tuple[str, float]] = []
        self.weights: dict[str, float] = {}
        self.retired: list[tuple[str, str]] = []
        # reports not known to have arrived, by number: sent again until one is answered (a report
        # whose answer was lost arrived, and RouterStats applies each number once)
        self.unsent: dict[int, tuple[list, list, list]] = {}
        self.reports = 0
        # its own thread: the default pool's threads may all wait on the embedder
        self.store_reads = ThreadPoolExecutor(1, thread_name_prefix="routes")
        self.routes_read_at = time.time()
        self._apply_all(self.store.live_releases())
        self.models_dir = models_dir  # where each tenant's retrieval index lives (empty: no retrieval)
        self.retrieval_k = retrieval_k
        self.indexes: dict[str, tuple[float, str | None, object]] = {}  # tenant -> (checked at, version, index)
        self.embed_lock = threading.Lock()
        if models_dir:  # load the embedder now: the first grounded request must not pay ~5 s for it
            from datacreek_assets.embeddings.question_encoder import embed_question

            embed_question("warm up")
        self.keys: dict[str, tuple[str | None, float]] = {}

    async def check_health(self) -> None:
        """Serve's periodic health check (every REPORT_EVERY_S): this replica's samples and
        heartbeat are reported (first: a replica whose read is stuck is seen to be behind), then
        the routes re-read. Neither failing makes the replica unhealthy: it goes on routing by
        the routes it has, and reports at the next check."""
        try:
            await asyncio.wait_for(self._report(), REPORT_TIMEOUT_S)
        except Exception:  # RouterStats is restarting: the reports wait (up to MAX_UNSENT_REPORTS)
            pass
        await self._read_routes()

    async def _read_routes(self) -> None:
        started = time.time()  # the read sees every change committed before it starts
        try:
            releases = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
                self.store_reads, self.store.live_releases), READ_TIMEOUT_S)
        except Exception:  # the store: the routes stay as they are until it answers
            return
        if started < self.routes_read_at:  # a read that started later was applied first: this one is older
            return
        self._apply_all(releases)
        self.routes_read_at = started

    async def _report(self) -> None:
        """This replica's new samples as the next numbered report, after any not yet answered
        (in order; a failure leaves them for the next call). Two calls at once may send one
        report twice: RouterStats applies it once."""
        new = (self.unreported, self.retrievals, self.retired)
        self.unreported, self.retrievals, self.retired = [], [], []
        if any(new):  # (nothing new: no number, the heartbeat alone)
            self.reports += 1
            self.unsent[self.reports] = new
            self._trim_unsent()
        if not self.unsent:
            await self.stats.report.remote(self.replica, self.routes_read_at, [], [], dict(self.weights), [])
            return
        while self.unsent:
            number = next(iter(self.unsent))
            requests, retrievals, retired = self.unsent[number]
            # (every tenant's weight each time: a restarted RouterStats has them all again)
            await self.stats.report.remote(self.replica, self.routes_read_at, requests, retrievals,
                                           dict(self.weights), retired, number)
            self.unsent.pop(number, None)

    def _trim_unsent(self) -> None:
        """RouterStats away for minutes: the oldest reports' samples go (past MAX_UNSENT_REPORTS
        reports or MAX_UNREPORTED samples in all); the versions they retired go with the next."""
        while len(self.unsent) > 1 and (len(self.unsent) > MAX_UNSENT_REPORTS or
                                        sum(len(r[0]) for r in self.unsent.values()) > MAX_UNREPORTED):
            _, _, retired = self.unsent.pop(next(iter(self.unsent)))
            self.unsent[next(iter(self.unsent))][2][:0] = retired

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
        extractive = request.headers.get("x-extractive", "on").lower()
        if extractive not in ("on", "off"):
            return error(400, "invalid_request", "X-Extractive must be 'on' or 'off'")
        grounding = await self._ground(tenant, body) if retrieval == "on" else {"status": "off", "chunks": []}
        passages = grounding.pop("passages", [])
        span_of = passages if extractive == "on" and body.temperature == 0 else []
        return await self._forward(tenant, version, role, body, grounding, judged=pinned is None, span_of=span_of,
                                   fallback=role == "canary" and pinned is None)

    async def _ground(self, tenant: str, body: ChatRequest) -> dict:
        """Put the tenant's top passages for the last user turn into it; returns what was done."""
        from datacreek_assets.retrieval.prompt import with_context

        question = next((m.content for m in reversed(body.messages) if m.role == "user"), "")
        index = await asyncio.to_thread(self._index_of, tenant)
        if index is None or not len(index) or not question.strip():
            return {"status": "unavailable", "chunks": []}
        started = time.perf_counter()
        passages, seconds = await asyncio.to_thread(self._search, index, question)
        self.retrievals.append((tenant, seconds))
        grounded = with_context([m.model_dump() for m in body.messages], [p.text for p in passages])
        body.messages = [ChatMessage(**m) for m in grounded]
        return {"status": "on", "ms": round(seconds * 1000, 2), "waited_ms": round((time.perf_counter() - started) * 1000, 2),
                "chunks": [{"chunk_id": p.chunk_id, "doc_id": p.doc_id, "score": round(p.score, 4)} for p in passages],
                "passages": [p.text for p in passages]}

    def _search(self, index, question: str):
        """(passages, seconds of work): embedding and search, not the wait for the embedder."""
        from datacreek_assets.embeddings.question_encoder import embed_question

        with self.embed_lock:  # one embedder, one thread: requests take turns, as llama.cpp's do
            started = time.perf_counter()
            vector = embed_question(question)
        passages = index.search(vector, self.retrieval_k, question=question)
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
                if index is not None:
                    index.lexical()  # its BM25 terms: built here once per version, not in a timed search
            except RetrievalError:
                index = None  # a broken index is not served; the request goes on without passages
            version = latest
        self.indexes[tenant] = (time.monotonic(), version, index)
        return index

    async def _forward(self, tenant: str, version: str, role: str, body: ChatRequest, grounding: dict,
                       judged: bool = True, span_of: list[str] | None = None, fallback: bool = False):
        """``judged``: the request came through the split, so the canary verdict counts it. A request
        pinned with X-Model-Version (an evaluation, a client's test) is no sample of the split's
        traffic: it is in the metrics, not in the windows the canary is judged by. ``span_of``: the
        passages an extractive answer is held to (none: free decoding). ``fallback``: the split sent
        this request to the canary; if the canary's model is not servable (not ready, its adapter
        refused by the pool: a rollback that ended its release before this replica re-read the
        routes, a file that fails its digest), production answers it, outside the windows. A
        replica that fails otherwise is not asked twice."""
        name = f"{tenant}-{version}"
        release = self.releases.get((tenant, version))
        if release is None or release.model is None:  # recorded, files not yet published: the next reconcile
            self._measured(tenant, version, role, 503, 0.0, judged=False)
            if fallback and (production := self._production_besides(tenant, version)):
                return await self._forward(tenant, production, "production", body, grounding,
                                           judged=False, span_of=span_of)
            return error(503, "unavailable", f"model {name} is not ready yet; retry")
        handle = self.handles.get(name)
        if handle is None:
            handle = serve.get_deployment_handle(AdapterServer.name, app_name=pool_name(release.model.sha256))
            if release.adapter is not None:  # to a replica that has the adapter loaded, when one has
                handle = handle.options(multiplexed_model_id=adapter_model_id(tenant, version, release.adapter))
            self.handles[name] = handle
        request = {**body.model_dump(exclude={"model"}), "tenant": tenant, "version": version, "span_of": span_of or []}
        started = time.perf_counter()
        try:
            if release.injected_delay_s:  # a drill's fault: here, not on the pool shared with other tenants
                await asyncio.sleep(release.injected_delay_s)
            reply = await handle.remote(request)
        except Exception as err:  # the deployment failed or went away mid-request: no traceback to the client
            self._measured(tenant, version, role, 503, time.perf_counter() - started, judged)
            # (Ray's error for a replica's exception is also an instance of that exception's class)
            if (fallback and isinstance(err, (AdapterError, ModelFileError))
                    and (production := self._production_besides(tenant, version))):
                return await self._forward(tenant, production, "production", body, grounding,
                                           judged=False, span_of=span_of)
            return error(503, "unavailable", f"model {name} could not answer ({type(err).__name__}); retry")
        latency = time.perf_counter() - started
        # (Serve's proxy already puts the request id on the request and echoes it in the response)
        headers = {"X-Model-Version": version, "X-Served-By": name, "X-Release-Role": role,
                   "X-Retrieval": grounding["status"], "X-Extractive": "on" if span_of else "off"}
        if "error" in reply:
            self._measured(tenant, version, role, 413, latency, judged)
            return error(413, reply["error"]["type"], "the prompt does not fit the model's context window", headers)
        self._measured(tenant, version, role, 200, latency, judged)
        reply["retrieval"] = grounding  # which of the tenant's chunks the answer was grounded in
        return JSONResponse(reply, headers=headers)

    def _production_besides(self, tenant: str, version: str) -> str | None:
        """The tenant's production version as this replica routes now (a promotion may have landed
        since the split chose), unless that is ``version``."""
        route = self.routes.get(tenant)
        return route.production if route is not None and route.production != version else None

    def _measured(self, tenant: str, version: str, role: str, code: int, latency_s: float, judged: bool) -> None:
        self.unreported.append(RequestSample(tenant, version, role, code, latency_s, judged, time.time()))
        if len(self.unreported) > MAX_UNREPORTED:
            del self.unreported[:len(self.unreported) - MAX_UNREPORTED]

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
        await self._read_routes()
        return {"tenants": len(self.routes)}

    @api.post("/admin/v1/tenants/{tenant}/reload")
    async def reload(self, tenant: str, request: Request):
        """Re-read a tenant's route from the release store (the control plane calls this after
        every change it records there)."""
        if not self._admin(request):
            return error(401, "unauthorized", "admin token required")
        try:
            validate_tenant_id(tenant)
        except InvalidTenantId as err:
            return error(400, "invalid_request", str(err))
        await self._read_routes()  # all of them: one query, and never older than a read already applied
        route = self.routes.get(tenant)
        return {"tenant": tenant, "route": route.as_dict() if route else None}

    def _apply_all(self, releases: list) -> None:
        """Every tenant's live releases (and the routes they make) as read from the store; only
        the tenants whose changed are touched."""
        from datacreek_assets.serving.release_store import routes_of

        routes = routes_of(releases)
        by_tenant: dict[str, dict] = {}
        for release in releases:
            by_tenant.setdefault(release.tenant_id, {})[release.version] = release
        current: dict[str, dict] = {}
        for (tenant, version), release in self.releases.items():
            current.setdefault(tenant, {})[version] = release
        for tenant in set(self.routes) | set(routes) | set(by_tenant) | set(current):
            if (self.routes.get(tenant), current.get(tenant, {})) != (routes.get(tenant), by_tenant.get(tenant, {})):
                self._apply(tenant, routes.get(tenant), list(by_tenant.get(tenant, {}).values()))

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
            self.retired.append((tenant, version))
            self.handles.pop(f"{tenant}-{version}", None)
        self.weights[tenant] = route.canary_weight if route else 0.0

    @api.get("/admin/v1/tenants/{tenant}/window")
    async def window(self, tenant: str, request: Request):
        if not self._admin(request):
            return error(401, "unauthorized", "admin token required")
        route = self.routes.get(tenant)
        if route is None:
            return error(404, "no_model", "no live route for this tenant")
        sides = {role: version for role, version in (("production", route.production), ("canary", route.canary))
                 if version is not None}
        windows = await self._from_stats("window", tenant, list(sides.values()))
        if windows is None:
            return stats_unavailable()
        sides = {role: {"version": version, **windows["versions"][version]} for role, version in sides.items()}
        if "production" in sides:
            sides["production"]["total"] = None  # (promotion counts the canary's requests only)
        return {"tenant": tenant, "window_s": windows["window_s"], "route": route.as_dict(), **sides}

    @api.get("/admin/v1/routers")
    async def routers(self, request: Request):
        """The router replicas alive: when each last read the release store, what it reported."""
        if not self._admin(request):
            return error(401, "unauthorized", "admin token required")
        alive = await self._from_stats("alive")
        return stats_unavailable() if alive is None else {"routers": alive}

    @api.get("/metrics")
    async def metrics(self, request: Request):
        if not self._admin(request):
            return error(401, "unauthorized", "admin token required")
        from prometheus_client import CONTENT_TYPE_LATEST

        text = await self._from_stats("metrics")
        return stats_unavailable() if text is None else PlainTextResponse(text, media_type=CONTENT_TYPE_LATEST)

    async def _from_stats(self, method: str, *args):
        """RouterStats' answer, with this replica's latest samples reported first; None while it
        cannot answer (restarting)."""
        try:
            await asyncio.wait_for(self._report(), REPORT_TIMEOUT_S)
            return await asyncio.wait_for(getattr(self.stats, method).remote(*args), REPORT_TIMEOUT_S)
        except Exception:
            return None

    @api.get("/healthz")
    async def healthz(self):
        return {"ok": True, "tenants": len(self.routes)}

