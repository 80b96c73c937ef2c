"""The serving control API's checks that come before any change (the changes themselves run
against real Ray Serve in tests/integration/test_serving.py): each tenant's token acts for
that tenant only, refs outside the tenant's prefix are refused, and a base is admitted from a
tenant's staging only with the bytes its digest names."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient

from datacreek_assets.object_store import LocalObjectStore
from datacreek_assets.serving.control import ReleaseRefused, ServingError
from datacreek_assets.serving.control_api import control_api, control_token
from datacreek_assets.serving.control_client import ServingControlClient
from datacreek_assets.serving.model_files import (
    ModelDigestMismatch, ModelFileError, ModelRef, adapter_key, admit_base, base_key, stage_base, staged_base_key,
)
from datacreek_assets.settings import ConfigError
from datacreek_assets.tenancy import InvalidTenantId

SECRET = "unit-control-secret"
SHA = "ab" * 32


def test_each_tenant_has_its_own_token_from_the_platform_secret():
    assert control_token(SECRET, "acme") == control_token(SECRET, "acme")
    assert control_token(SECRET, "acme") != control_token(SECRET, "globex")
    assert control_token(SECRET, "acme") != control_token("other-secret", "acme")
    with pytest.raises(ConfigError):
        control_token("", "acme")
    with pytest.raises(InvalidTenantId):
        control_token(SECRET, "../acme")


@pytest.fixture
def api(tmp_path):
    def no_change():  # every request here must be refused before the platform's serving is touched
        raise AssertionError("the control plane was reached")

    return TestClient(control_api(no_change, SECRET, tmp_path, lambda tenant: tenant in ("acme", "globex")))


def release_body(tenant: str, version: str = "v1") -> dict:
    return {"version": version, "model": {"key": base_key(SHA), "sha256": SHA, "size": 10},
            "adapter": {"key": adapter_key(tenant, SHA), "sha256": SHA, "size": 10}}


def bearer(tenant: str) -> dict:
    return {"Authorization": f"Bearer {control_token(SECRET, tenant)}"}


def test_a_token_acts_for_its_own_tenant_only(api):
    assert api.post("/v1/tenants/acme/releases", json=release_body("acme")).status_code == 401
    assert api.post("/v1/tenants/acme/production", headers={"Authorization": "Bearer nope"}).status_code == 403
    for path in ("releases", "production"):  # acme's token on globex's path
        reply = api.post(f"/v1/tenants/globex/{path}", json=release_body("globex"), headers=bearer("acme"))
        assert reply.status_code == 403 and "globex" in reply.json()["detail"]
    assert api.get(f"/v1/tenants/globex/bases/{SHA}", headers=bearer("acme")).status_code == 403
    # a token made with another secret is not the platform's
    forged = {"Authorization": f"Bearer {control_token('guessed', 'acme')}"}
    assert api.post("/v1/tenants/acme/production", headers=forged).status_code == 403
    non_ascii = {"Authorization": "Bearer café".encode("latin-1")}
    assert api.post("/v1/tenants/acme/production", headers=non_ascii).status_code == 403
    # a tenant no longer registered (removed): its token, still valid as a token, acts for nothing
    reply = api.post("/v1/tenants/initech/production", headers=bearer("initech"))
    assert reply.status_code == 403 and "not registered" in reply.json()["detail"]


def test_malformed_requests_are_refused_before_anything_changes(api):
    assert api.post("/v1/tenants/Bad_Tenant/production", headers=bearer("acme")).status_code == 400
    for version in ("../v1", "base"):  # 'base' is the platform's own production, not a release
        assert api.post("/v1/tenants/acme/releases", json=release_body("acme", version),
                        headers=bearer("acme")).status_code == 400
    broken = {**release_body("acme"), "model": {"key": base_key(SHA), "sha256": "not-a-digest", "size": 1}}
    assert api.post("/v1/tenants/acme/releases", json=broken, headers=bearer("acme")).status_code == 400
    too_long = {**release_body("acme"), "run_key": "r" * 129}
    assert api.post("/v1/tenants/acme/releases", json=too_long, headers=bearer("acme")).status_code == 422
    for key in ("../x.gguf", "a\x00b", "/abs.gguf"):  # no object key at all
        broken = {**release_body("acme"), "model": {"key": key, "sha256": SHA, "size": 1}}
        assert api.post("/v1/tenants/acme/releases", json=broken, headers=bearer("acme")).status_code == 400
    # acme naming globex's adapter: refused whatever its digest
    theirs = {**release_body("acme"), "adapter": release_body("globex")["adapter"]}
    reply = api.post("/v1/tenants/acme/releases", json=theirs, headers=bearer("acme"))
    assert reply.status_code == 403 and "globex" in reply.json()["detail"]
    assert api.get("/v1/tenants/acme/bases/not-a-digest", headers=bearer("acme")).status_code == 400


def test_a_staged_base_is_admitted_only_with_the_bytes_its_digest_names(tmp_path):
    store = LocalObjectStore(tmp_path / "store")
    base = tmp_path / "base.gguf"
    base.write_bytes(b"GGUF base bytes")
    digest = hashlib.sha256(base.read_bytes()).hexdigest()

    staged = stage_base(store, "acme", base)
    assert staged.key == staged_base_key("acme", digest) and staged.key.startswith("tenants/acme/")
    # globex cannot have acme's staging admitted
    with pytest.raises(ModelFileError):
        admit_base(store, staged, "globex", tmp_path / "work", 2**20)
    assert not store.exists(base_key(digest))
    # over the size admitted: refused before a byte is read
    with pytest.raises(ModelFileError, match="over the 8 admitted"):
        admit_base(store, staged, "acme", tmp_path / "work", 8)
    # other bytes under the digest's name: refused, nothing shared is written
    store.put(staged_base_key("globex", digest), b"something else")
    with pytest.raises(ModelDigestMismatch):
        admit_base(store, ModelRef(staged_base_key("globex", digest), digest, 15), "globex", tmp_path / "work", 2**20)
    assert not store.exists(base_key(digest))
    # the right bytes: copied to the shared key
    admitted = admit_base(store, staged, "acme", tmp_path / "work", 2**20)
    assert admitted == ModelRef(base_key(digest), digest, base.stat().st_size)
    assert store.get(base_key(digest)) == base.read_bytes()
    assert list((tmp_path / "work").iterdir()) == [] and not store.exists(staged.key)  # no copy left behind
    # once published, any tenant's ref of that digest is the shared file (no staging needed)
    assert admit_base(store, ModelRef(base_key(digest), digest, 0), "globex", tmp_path / "work", 8) == admitted


def test_the_client_acts_for_its_own_tenant_and_needs_a_token(tmp_path):
    store = LocalObjectStore(tmp_path)
    with pytest.raises(ServingError, match="token"):
        ServingControlClient("http://127.0.0.1:9", "", store, "acme")
    client = ServingControlClient("http://127.0.0.1:9", "t", store, "acme")
    with pytest.raises(ServingError, match="globex"):
        client.promote_ready("globex")
    with pytest.raises(ServingError, match="not reachable"):  # nothing listens on port 9
        client.promote_ready("acme")


def test_the_serving_resource_gives_release_steps_the_control_api_where_one_is_configured(tmp_path):
    from resources.stores import ObjectStoreResource, ServingResource

    serving = ServingResource(ray_address="127.0.0.1:1", http_port=1, store_url=f"sqlite:///{tmp_path}/s.db",
                              admin_token="a", control_url="http://control:8200", control_token="t",
                              object_store=ObjectStoreResource(backend="local", root=str(tmp_path / "objects")))
    releases = serving.releases("acme")
    assert isinstance(releases, ServingControlClient) and releases.tenant_id == "acme"
    local = ServingResource(ray_address="127.0.0.1:1", http_port=1, store_url=f"sqlite:///{tmp_path}/s.db",
                            admin_token="a").releases("acme")
    try:
        assert type(local).__name__ == "ServingControl"
    finally:
        local.close()


@pytest.mark.parametrize("error, status", [(ReleaseRefused("not ready"), 409), (ServingError("Ray is away"), 503),
                                           (ModelDigestMismatch("refused by its replica"), 422),
                                           (ConnectionError("the release store is away"), 503)])
def test_the_control_planes_refusals_keep_their_meaning_over_http(tmp_path, error, status):
    class Control:  # the platform's ServingControl as far as a promotion goes: it refuses
        def promote_ready(self, tenant):
            raise error

    api = TestClient(control_api(Control, SECRET, tmp_path, lambda tenant: True))
    reply = api.post("/v1/tenants/acme/production", headers=bearer("acme"))
    assert reply.status_code == status and str(error) in reply.json()["detail"]
