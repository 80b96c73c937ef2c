"""A tenant's release step in a cluster: it uploads its model files with its own object-store
credentials, under its own prefix, and asks the platform's serving control API
(`serving.control_api`) for the change. Same calls as `ServingControl`'s for releases."""

from __future__ import annotations

import time
from pathlib import Path

import requests

from datacreek_assets.object_store import ObjectStore, file_sha256
from datacreek_assets.serving.control import ReleaseRefused, ServingError
from datacreek_assets.serving.model_files import ModelRef, base_key, publish_adapter, stage_base
from datacreek_assets.tenancy import validate_tenant_id

# a release deploys (a base pool may start, the adapter is loaded) and waits for every router replica
REQUEST_TIMEOUT_S = 900.0


class ServingControlClient:
    def __init__(self, url: str, token: str, store: ObjectStore, tenant_id: str):
        if not token:
            raise ServingError("no serving control token (DATACREEK_SERVING_CONTROL_TOKEN, from "
                               "`datacreek tenant credentials`)")
        self.url, self.token, self.store = url.rstrip("/"), token, store
        self.tenant_id = validate_tenant_id(tenant_id)

    def _call(self, method: str, tenant: str, path: str, body: dict | None = None) -> dict:
        if validate_tenant_id(tenant) != self.tenant_id:
            raise ServingError(f"this release step acts for tenant {self.tenant_id!r}, not {tenant!r}")
        try:
            reply = requests.request(method, f"{self.url}/v1/tenants/{tenant}/{path}", json=body,
                                     timeout=REQUEST_TIMEOUT_S, headers={"Authorization": f"Bearer {self.token}"})
        except requests.RequestException as err:
            raise ServingError(f"the serving control API at {self.url} is not reachable: {err}") from None
        if reply.status_code == 200:
            return reply.json()
        try:
            detail = reply.json().get("detail", reply.text)
        except ValueError:
            detail = reply.text
        error = ReleaseRefused if reply.status_code == 409 else ServingError
        raise error(f"serving control API: HTTP {reply.status_code}: {str(detail)[:500]}")

    def release_newest(self, tenant: str, candidate) -> dict:
        """Upload `candidate`'s adapter and stage its base (nothing is sent twice: a stored copy
        with the same digest stays), then ask for the release."""
        started = time.perf_counter()
        base, digest = Path(candidate.base_path), file_sha256(Path(candidate.base_path))
        if self._call("GET", tenant, f"bases/{digest}")["published"]:
            model = ModelRef(base_key(digest), digest, base.stat().st_size)
        else:
            model = stage_base(self.store, tenant, base)
        adapter = publish_adapter(self.store, tenant, Path(candidate.adapter_path))
        upload_s = round(time.perf_counter() - started, 2)
        outcome = self._call("POST", tenant, "releases", {"version": candidate.version, "run_key": candidate.run_key,
                                                          "model": model.as_dict(), "adapter": adapter.as_dict()})
        return {**outcome, "upload_s": upload_s}

    def promote_ready(self, tenant: str) -> dict:
        return self._call("POST", tenant, "production")

    def close(self) -> None:
        pass
