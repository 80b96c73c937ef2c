import pytest

from datacreek_assets.tenancy import InvalidTenantId, validate_tenant_id

HOSTILE = ["../x", "A", "a_b", "-a", "a-", "a;b", "é", "tenant\u200b", "a" * 41, "", "a\n", "a b",
           "a/b", "a.b", "$(rm)", "a'--", "Tenant", None, 42, "0x00\0"]


@pytest.mark.parametrize("tenant_id", ["a", "acme", "acme-research", "0day", "a" * 40, "a1-b2-c3"])
def test_valid_ids_pass_unchanged(tenant_id):
    assert validate_tenant_id(tenant_id) == tenant_id


@pytest.mark.parametrize("tenant_id", HOSTILE)
def test_hostile_ids_are_refused_with_the_rule(tenant_id):
    with pytest.raises(InvalidTenantId) as err:
        validate_tenant_id(tenant_id)
    assert "lowercase DNS label" in str(err.value)
    assert "1 to 40 characters" in str(err.value)
