import pytest

from datacreek_assets.object_store import InvalidObjectKey, LocalObjectStore, TenantObjectStore
from datacreek_assets.tenancy import InvalidTenantId


def test_tenant_scope_prefixes_and_lists_relative_keys(tmp_path):
    base = LocalObjectStore(tmp_path)
    a, b = TenantObjectStore(base, "acme"), TenantObjectStore(base, "globex")
    a.put("inbox/x.txt", b"A")
    b.put("inbox/x.txt", b"B")
    assert (tmp_path / "tenants/acme/inbox/x.txt").read_bytes() == b"A"
    assert a.list("inbox") == ["inbox/x.txt"] and a.get("inbox/x.txt") == b"A"
    assert b.get("inbox/x.txt") == b"B"
    a.put("d/c.json", b"{}", area="toxic")
    assert (tmp_path / "ingest-toxic/acme/d/c.json").exists()
    assert a.delete_all() == 2 and b.list() == ["inbox/x.txt"]


@pytest.mark.parametrize("key", ["../globex/inbox/x.txt", "/etc/passwd", "inbox/../../x", "a//b", "a\\..\\b", ""])
def test_keys_cannot_leave_the_scope(tmp_path, key):
    scope = TenantObjectStore(LocalObjectStore(tmp_path), "acme")
    with pytest.raises(InvalidObjectKey):
        scope.put(key, b"x")


def test_scope_needs_a_valid_tenant(tmp_path):
    with pytest.raises(InvalidTenantId):
        TenantObjectStore(LocalObjectStore(tmp_path), "../acme")
