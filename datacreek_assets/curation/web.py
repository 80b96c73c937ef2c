"""The curator's review, over HTTP (FastAPI): `/ui/edge_review`, server-rendered HTML (Jinja2,
autoescaped; one small script, no front-end build), and the JSON API it calls,
`PATCH /api/v1/edges/{id}` and the repair log's undo.

A curator signs in with a curator key (``ReviewStore.issue_key``), which names the tenant and the
curator; an operator with the admin token names the tenant (the `X-Tenant` header, or the sign-in
form). The page keeps the key in an HttpOnly, SameSite=Strict cookie; a state-changing request
authenticated by that cookie must also carry `X-Requested-With: datacreek`, which a cross-site
form cannot send. Every read and write is scoped to the signed-in tenant: another tenant's edge
id is unknown here (404), as is its log.
"""

# no `from __future__ import annotations`: FastAPI must see the real types of the handlers' parameters
import asyncio
import hmac
import math
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from datacreek_assets.api_errors import error
from datacreek_assets.curation.decisions import DecisionError
from datacreek_assets.curation.review import EdgeReview
from datacreek_assets.curation.review_store import STATUSES
from datacreek_assets.graph.fact_curation import StaleFactVersion, UnknownFact
from datacreek_assets.tenancy import InvalidTenantId, validate_tenant_id

HERE = Path(__file__).parent
KEY_COOKIE, TENANT_COOKIE = "datacreek_curator", "datacreek_tenant"
CSRF_HEADER = "x-requested-with"
EDGE_ID = re.compile(r"^[\w.:\-]{1,128}$")
MAX_BODY = 16 * 1024
PER_PAGE = (10, 25, 50, 100)
ADMIN = "admin"
ADMIN_SESSION = "adm."  # an operator's sign-in cookie: an HMAC of the tenant under the admin token
SECURITY_HEADERS = {"Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=0)
    decision: str = Field(pattern="^(accept|reject|edit)$")
    predicate: str | None = Field(default=None, max_length=200)
    reason: str | None = Field(default=None, max_length=1000)


class Curator:
    def __init__(self, tenant: str, name: str, by_cookie: bool):
        self.tenant, self.name, self.by_cookie = tenant, name, by_cookie


def neighbourhood_svg(rows: list[list], width: int = 220, height: int = 120) -> dict:
    """Positions for the page's small picture: the edge's two entities in the middle, each one's
    strongest neighbours fanned out on its side, line width by weight."""
    if not rows:
        return {"nodes": [], "lines": [], "width": width, "height": height}
    u, v = rows[0][0], rows[0][1]
    pos = {u: (width * 0.33, height / 2), v: (width * 0.67, height / 2)}
    sides = {u: [r for r in rows[1:] if r[0] == u], v: [r for r in rows[1:] if r[0] == v]}
    for end, x, direction in ((u, width * 0.1, -1), (v, width * 0.9, 1)):
        around = [r[1] for r in sides[end] if r[1] not in pos]
        for i, name in enumerate(around):
            pos[name] = (x, height * (i + 1) / (len(around) + 1))
    heaviest = max([r[2] for r in rows] + [1.0])
    lines = [{"x1": pos[a][0], "y1": pos[a][1], "x2": pos[b][0], "y2": pos[b][1], "edge": i == 0,
              "width": round(0.8 + 2.5 * w / heaviest, 2)} for i, (a, b, w) in enumerate(rows) if a in pos and b in pos]
    nodes = [{"x": x, "y": y, "label": name[:18], "title": name, "edge": name in (u, v)} for name, (x, y) in pos.items()]
    return {"nodes": nodes, "lines": lines, "width": width, "height": height}


def curation_app(graph_admin, store, repair_log, admin_token: str, publish=None) -> FastAPI:
    """``graph_admin``: a GraphAdmin (its driver stays open); ``store``: the ReviewStore;
    ``repair_log``: the RepairLog; ``publish``: sends graph events to the hot layer (None: none)."""
    if len(admin_token) < 16:
        raise ValueError("the admin token must have at least 16 characters")
    templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                            trim_blocks=True, lstrip_blocks=True)
    app = FastAPI(title="Datacreek curation", docs_url=None, redoc_url=None)
    server_ms: list[float] = []  # the review page's server time, newest last (bench/ reads it)
    app.state.page_ms = server_ms

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):  # unrouted paths: the API's error shape
        return error(err.status_code, "not_found" if err.status_code == 404 else "http_error", str(err.detail))

    def review(tenant: str) -> EdgeReview:
        return EdgeReview(graph_admin.tenant(tenant), repair_log, store, publish)

    def admin_session(tenant: str) -> str:
        return ADMIN_SESSION + hmac.new(admin_token.encode(), f"curation-session\0{tenant}".encode(),
                                        "sha256").hexdigest()

    def curator_of(request: Request) -> Curator | JSONResponse:
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        by_cookie = not (scheme.lower() == "bearer" and bearer)
        key = request.cookies.get(KEY_COOKIE, "") if by_cookie else bearer
        claimed = request.headers.get("x-tenant") or (request.cookies.get(TENANT_COOKIE) if by_cookie else None)
        if by_cookie and key.startswith(ADMIN_SESSION) and claimed:  # an operator's page: one tenant's
            if hmac.compare_digest(key.encode(), admin_session(claimed).encode()):
                return Curator(claimed, ADMIN, True)
            return error(401, "unauthorized", "this admin session is not for that tenant")
        if key and hmac.compare_digest(key.encode(), admin_token.encode()):
            try:
                return Curator(validate_tenant_id(claimed or ""), ADMIN, by_cookie)
            except InvalidTenantId as err:
                return error(400, "invalid_tenant", f"the admin token names its tenant (X-Tenant): {err}")
        named = store.curator_for_key(key) if key else None
        if named is None:
            return error(401, "unauthorized", "missing or invalid curator key (Authorization: Bearer <key>)",
                         {"WWW-Authenticate": "Bearer"})
        if claimed is not None and claimed != named[0]:
            return error(403, "forbidden", "the X-Tenant header does not match the curator key's tenant")
        return Curator(named[0], named[1], by_cookie)

    async def signed_in(request: Request, changes: bool = False) -> Curator | JSONResponse:
        curator = await asyncio.to_thread(curator_of, request)
        if isinstance(curator, Curator) and changes and curator.by_cookie and \
                request.headers.get(CSRF_HEADER) != "datacreek":
            return error(403, "forbidden", f"a change made with the sign-in cookie needs {CSRF_HEADER}: datacreek")
        return curator

    def html(body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)

    async def read_body(request: Request) -> bytes | JSONResponse:
        body = await request.body()
        if len(body) > MAX_BODY:
            return error(413, "request_too_large", f"the body exceeds {MAX_BODY} bytes")
        return body

    # -- pages ------------------------------------------------------------------
    @app.get("/ui/login")
    async def login_page(request: Request, failed: int = 0):
        return html(templates.get_template("login.html").render(failed=bool(failed)))

    @app.post("/ui/login")
    async def login(request: Request):
        if not _same_origin(request):  # another site signing a victim in with its own key
            return html("sign in from this site's own form", 403)
        body = await request.body()
        if len(body) > MAX_BODY:
            return html("too large", 413)
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        key, tenant = form.get("key", "").strip(), form.get("tenant", "").strip()
        is_admin = bool(key) and hmac.compare_digest(key.encode(), admin_token.encode())
        named = None if is_admin or not key else await asyncio.to_thread(store.curator_for_key, key)
        try:
            tenant = validate_tenant_id(tenant) if is_admin else (named[0] if named else "")
        except InvalidTenantId:
            tenant = ""
        if not tenant:
            return RedirectResponse("/ui/login?failed=1", status_code=303)
        response = RedirectResponse("/ui/edge_review", status_code=303)
        # Secure wherever the page is served over TLS (directly or behind a proxy that says so)
        secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
        # the admin token itself never sits in a browser: its session opens this one tenant only
        for name, value in ((KEY_COOKIE, admin_session(tenant) if is_admin else key), (TENANT_COOKIE, tenant)):
            response.set_cookie(name, value, httponly=True, samesite="strict", path="/", secure=secure)
        return response

    @app.post("/ui/logout")
    async def logout():
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(KEY_COOKIE, path="/")
        response.delete_cookie(TENANT_COOKIE, path="/")
        return response

    @app.get("/ui/static/edge_review.js")
    async def script():
        return FileResponse(HERE / "templates" / "edge_review.js", media_type="text/javascript",
                            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    @app.get("/ui/static/edge_review.css")
    async def stylesheet():
        return FileResponse(HERE / "templates" / "edge_review.css", media_type="text/css",
                            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    @app.get("/ui/edge_review")
    async def edge_review_page(request: Request, page: int = 1, per_page: int = 25, status: str = "open",
                               q: str = "", predicate: str = "", min_delta: str = "", reason: str = ""):
        started = time.perf_counter()
        curator = await signed_in(request)
        if isinstance(curator, JSONResponse):
            return RedirectResponse("/ui/login", status_code=303)
        per_page = per_page if per_page in PER_PAGE else 25
        status = status if status in STATUSES else "open"
        floor = _number(min_delta)
        filters = {"status": status, "q": q[:200], "predicate": predicate[:200], "min_delta": min_delta[:32],
                   "reason": reason if reason in ("structural", "low_confidence", "cooccurrence") else "", "per_page": per_page}

        def render() -> str:
            total_page = store.page(curator.tenant, 0, 1, status, filters["q"], filters["predicate"], floor,
                                    filters["reason"])
            pages = max(1, math.ceil(total_page.total / per_page))
            current = min(max(1, page), pages)
            shown = store.page(curator.tenant, (current - 1) * per_page, per_page, status, filters["q"],
                               filters["predicate"], floor, filters["reason"])
            link = lambda n: "/ui/edge_review?" + urlencode({**filters, "page": n})  # noqa: E731
            return templates.get_template("edge_review.html").render(
                tenant=curator.tenant, curator=curator.name, edges=shown.edges, total=shown.total, page=current,
                pages=pages, filters=filters, predicates=store.predicates(curator.tenant), per_pages=PER_PAGE,
                previous=link(current - 1) if current > 1 else None, next=link(current + 1) if current < pages else None,
                picture=neighbourhood_svg, first=(current - 1) * per_page)

        body = await asyncio.to_thread(render)
        server_ms.append((time.perf_counter() - started) * 1000)
        del server_ms[:-10_000]
        return html(body)

    @app.get("/ui/edge_review/log")
    async def log_page(request: Request, limit: int = 100):
        curator = await signed_in(request)
        if isinstance(curator, JSONResponse):
            return RedirectResponse("/ui/login", status_code=303)
        entries = await asyncio.to_thread(repair_log.entries, curator.tenant, None, min(max(limit, 1), 1000))
        undone = {e.undoes for e in entries if e.undoes is not None}
        return html(templates.get_template("repair_log.html").render(
            tenant=curator.tenant, curator=curator.name, entries=entries, undone=undone))

    # -- the API ----------------------------------------------------------------
    @app.get("/api/v1/edges")
    async def list_edges(request: Request, offset: int = 0, limit: int = 25, status: str = "open"):
        curator = await signed_in(request)
        if isinstance(curator, JSONResponse):
            return curator
        if status not in STATUSES or offset < 0 or not 1 <= limit <= 500:
            return error(422, "invalid_request", f"status is one of {STATUSES}, offset >= 0, limit 1 to 500")
        shown = await asyncio.to_thread(store.page, curator.tenant, offset, limit, status)
        return {"total": shown.total, "offset": offset, "edges": [_edge_json(e) for e in shown.edges]}

    @app.get("/api/v1/edges/{edge_id}")
    async def get_edge(request: Request, edge_id: str):
        curator = await signed_in(request)
        if isinstance(curator, JSONResponse):
            return curator
        if not EDGE_ID.match(edge_id):
            return error(400, "invalid_edge_id", "an edge id is 1 to 128 letters, digits, _ . : or -")
        edge = await asyncio.to_thread(store.edge, curator.tenant, edge_id)
        state = await asyncio.to_thread(graph_admin.tenant(curator.tenant).fact_state, edge_id)
        if state is None and edge is None:  # a queued proposal is not a fact yet
            return error(404, "unknown_edge", f"no edge {edge_id} in this tenant's graph")
        return {"id": edge_id, "state": state, "queued": _edge_json(edge) if edge else None}

    @app.patch("/api/v1/edges/{edge_id}")
    async def patch_edge(request: Request, edge_id: str):
        curator = await signed_in(request, changes=True)
        if isinstance(curator, JSONResponse):
            return curator
        if not EDGE_ID.match(edge_id):
            return error(400, "invalid_edge_id", "an edge id is 1 to 128 letters, digits, _ . : or -")
        body = await read_body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            decision = Decision.model_validate_json(body or b"{}")
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()[:5])
            return error(422, "invalid_request", f"malformed decision: {problems}")
        try:
            entry = await asyncio.to_thread(review(curator.tenant).decide, edge_id, decision.version,
                                            decision.decision, curator.name, decision.predicate, decision.reason)
        except UnknownFact:
            return error(404, "unknown_edge", f"no edge {edge_id} in this tenant's graph")
        except StaleFactVersion as err:
            return error(409, "stale_version", str(err), {"X-Current-Version": str(err.current)})
        except DecisionError as err:
            return error(422, "invalid_decision", str(err))
        return _entry_json(entry)

    @app.get("/api/v1/repairs")
    async def list_repairs(request: Request, edge_id: str | None = None, limit: int = 100):
        curator = await signed_in(request)
        if isinstance(curator, JSONResponse):
            return curator
        if not 1 <= limit <= 1000 or (edge_id is not None and not EDGE_ID.match(edge_id)):
            return error(422, "invalid_request", "limit is 1 to 1000; edge_id an edge id")
        entries = await asyncio.to_thread(repair_log.entries, curator.tenant, edge_id, limit)
        return {"entries": [_entry_json(e) for e in entries]}

    @app.post("/api/v1/repairs/{entry_id}/undo")
    async def undo_repair(request: Request, entry_id: int):
        curator = await signed_in(request, changes=True)
        if isinstance(curator, JSONResponse):
            return curator
        if await asyncio.to_thread(repair_log.entry, curator.tenant, entry_id) is None:
            return error(404, "unknown_entry", f"no decision {entry_id} in this tenant's repair log")
        try:
            entry = await asyncio.to_thread(review(curator.tenant).undo, entry_id, curator.name)
        except StaleFactVersion as err:
            return error(409, "stale_version", f"the edge changed since decision {entry_id}: {err}")
        except DecisionError as err:
            return error(409, "not_undoable", str(err))
        return _entry_json(entry)

    @app.get("/healthz")
    async def healthz():
        return Response("ok", media_type="text/plain")

    return app


def _same_origin(request: Request) -> bool:
    """A form post from this server's own pages: the browser's Sec-Fetch-Site, or its Origin."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin is None or origin.split("://", 1)[-1] == request.headers.get("host", "")


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _edge_json(edge) -> dict:
    return {"id": edge.fact_id, "rank": edge.rank, "subject": edge.subject, "predicate": edge.predicate,
            "object": edge.object, "sentence": edge.sentence, "doc_id": edge.doc_id, "chunk_id": edge.chunk_id,
            "version": edge.current_version, "delta_lambda": edge.delta_lambda, "exact": edge.exact,
            "trusted": edge.trusted, "trust_reason": edge.trust_reason, "confidence": edge.confidence,
            "reasons": edge.reasons, "proposed": edge.proposed, "decision": edge.decision}


def _entry_json(entry) -> dict:
    return {"id": entry.id, "edge_id": entry.edge_id, "tenant": entry.tenant_id, "curator": entry.curator,
            "decision": entry.decision, "before": entry.before, "after": entry.after,
            "delta_lambda": entry.delta_lambda, "version": entry.version, "undoes": entry.undoes,
            "decided_at": entry.decided_at.isoformat()}
