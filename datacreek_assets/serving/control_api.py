"""The serving control API: in a cluster, tenants' release steps ask the platform to release or
promote their models here instead of driving Ray themselves.

A tenant's pod then holds no Ray credentials and reaches no Ray port but the router's: with
Ray's token it could deploy anything, or ask a base pool for another tenant's adapter. Here
each tenant has its own token (`control_token`, derived from the platform's secret and
handed out by `datacreek tenant credentials`); a token acts on its own tenant's path only.

A release names files the tenant uploaded with its own object-store credentials, under its own
prefix: its adapter (``adapter_key``) and the base model it was trained on, staged
(``staged_base_key``) unless the platform already holds that base (``admit_base``). The API
admits them, and `ServingControl` (Ray, the router and the release store, all the platform's)
does the rest as for a local release.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel, Field

from datacreek_assets.serving.control import ReleaseRefused, ServingControl, ServingError
from datacreek_assets.serving.model_files import ModelFileError, ModelRef, adapter_key, admit_base, base_key
from datacreek_assets.serving.release_store import ReleaseConflict
from datacreek_assets.serving.routing import InvalidVersion, validate_version
from datacreek_assets.settings import ConfigError
from datacreek_assets.tenancy import InvalidTenantId, validate_tenant_id


def require_secret(secret: str) -> str:
    if not secret:
        raise ConfigError("the serving control API has no secret (DATACREEK_SERVING_CONTROL_SECRET)")
    return secret


def control_token(secret: str, tenant_id: str) -> str:
    """The tenant's token for the control API. Rotating the platform's secret rotates every
    tenant's (each pod then needs `datacreek tenant credentials` again)."""
    require_secret(secret)
    message = f"serving-control/{validate_tenant_id(tenant_id)}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


LOG = logging.getLogger(__name__)
MAX_BASE_BYTES = 16 * 2**30  # a staged base larger than this is refused unread (SmolLM2-135M f16: 258 MiB)


class ReleaseRequest(BaseModel):
    version: str
    run_key: str | None = Field(default=None, max_length=128)  # the release store's column
    model: dict  # ModelRef: the base GGUF, staged under the tenant's prefix or already published
    adapter: dict  # ModelRef: the tenant's adapter, under its own prefix


def control_api(open_control: Callable[[], ServingControl], secret: str, work_dir: Path,
                tenant_known: Callable[[str], bool], max_base_bytes: int = MAX_BASE_BYTES) -> FastAPI:
    """``open_control`` builds the platform's `ServingControl` (once, on first use: the CLI
    opens it before serving); ``work_dir`` holds staged base files while their digest is
    checked; ``tenant_known`` says whether a tenant is registered (a removed tenant's token acts
    for nothing); a staged base over ``max_base_bytes`` is refused unread."""
    require_secret(secret)
    app = FastAPI(title="Datacreek serving control", docs_url=None, redoc_url=None)
    # one change at a time: each takes seconds (deploy, every router replica re-reading) and
    # releases are rare; Ray's driver connection and the store's session are shared. One base
    # admission at a time too: each may download up to max_base_bytes onto the pod's disk.
    lock, opening, admitting = threading.Lock(), threading.Lock(), threading.Lock()
    opened: list[ServingControl] = []

    def control() -> ServingControl:
        with opening:
            if not opened:
                opened.append(open_control())
            return opened[0]

    def tenant_of(tenant: str, authorization: str | None = Header(default=None)) -> str:
        try:
            tenant = validate_tenant_id(tenant)
        except InvalidTenantId as err:
            raise HTTPException(400, str(err)) from None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "a tenant's control token is required (Authorization: Bearer ...)",
                                headers={"WWW-Authenticate": "Bearer"})
        expected = control_token(secret, tenant).encode()
        if not hmac.compare_digest(token.strip().encode("utf-8", "replace"), expected):
            raise HTTPException(403, f"this token does not act for tenant {tenant!r}")
        if not tenant_known(tenant):
            raise HTTPException(403, f"tenant {tenant!r} is not registered")
        return tenant

    @contextmanager
    def platform_errors():
        """What the platform said no to, as the status a release step can act on; anything
        else of its stores (SQL, S3, Ray) as 503, in one line."""
        try:
            yield
        except HTTPException:
            raise
        except (ReleaseRefused, ReleaseConflict) as err:
            raise HTTPException(409, str(err)) from None
        except ModelFileError as err:  # a file refused (its digest, its size, not uploaded)
            raise HTTPException(422, str(err)) from None
        except ServingError as err:
            raise HTTPException(503, str(err)) from None
        except Exception as err:  # a store that failed: the change is the platform's to retry
            LOG.exception("serving control API")
            raise HTTPException(503, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") \
                from None

    def changing(change: Callable[[ServingControl], dict]) -> dict:
        with lock, platform_errors():
            return change(control())

    @app.get("/healthz")
    async def healthz() -> dict:  # (on the event loop: not queued behind changes waiting for the lock)
        return {"ok": True}

    @app.get("/v1/tenants/{tenant}/bases/{sha256}")
    def base_published(sha256: str, tenant: str = Depends(tenant_of)) -> dict:
        """Whether the platform holds this base model already (then a release step uploads none)."""
        try:
            ref = ModelRef(base_key(sha256), sha256, 0)  # a digest, nothing else
        except (ModelFileError, ValueError) as err:
            raise HTTPException(400, str(err)) from None
        with platform_errors():
            return {"published": control().model_store().stored_sha256(ref.key) == sha256}

    @app.post("/v1/tenants/{tenant}/releases")
    def release(request: ReleaseRequest, tenant: str = Depends(tenant_of)) -> dict:
        """The tenant's newest passing model becomes its canary (`ServingControl.release_files`)."""
        try:
            version = validate_version(request.version)
            model, adapter = ModelRef.from_dict(request.model), ModelRef.from_dict(request.adapter)
        except (InvalidVersion, ModelFileError) as err:
            raise HTTPException(400, str(err)) from None
        if version == "base":  # the platform's own production of a first release
            raise HTTPException(400, "a release is a trained version, 'v' followed by a number")
        if adapter.key != adapter_key(tenant, adapter.sha256):
            raise HTTPException(403, f"adapter {adapter.key!r} is not tenant {tenant!r}'s")
        with platform_errors():
            store = control().model_store()
            if store.stored_sha256(adapter.key) != adapter.sha256:
                raise HTTPException(422, f"adapter {adapter.key!r} is not in the object store with SHA-256 "
                                         f"{adapter.sha256}: upload it first")
            with admitting:  # (not under the change lock: a download holds up no other tenant's change)
                base = admit_base(store, model, tenant, work_dir, max_base_bytes)
        return changing(lambda serving: serving.release_files(tenant, version, base, adapter, request.run_key))

    @app.post("/v1/tenants/{tenant}/production")
    def production(tenant: str = Depends(tenant_of)) -> dict:
        """The tenant's canary is promoted if the canary policy says so (`promote_ready`); 409 if not."""
        return changing(lambda serving: serving.promote_ready(tenant))

    return app
