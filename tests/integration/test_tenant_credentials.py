"""Per-tenant credentials on the real stores: a tenant's PostgreSQL role sees and writes its own
rows only and cannot mint credits; a tenant's FalkorDB user reaches its own graph only."""

import uuid

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from datacreek_assets.billing.ledger import CreditLedger
from datacreek_assets.hot_graph import connect_hot_graph
from datacreek_assets.serving.release_store import ServingStore
from datacreek_assets.tenant_credentials import (
    CredentialError,
    drop_postgres_role,
    falkordb_user,
    grant_falkordb_user,
    grant_postgres_role,
    revoke_falkordb_user,
    revoke_postgres_role,
    role_url,
)
from datacreek_assets.tenant_registry import TenantRegistry

pytestmark = pytest.mark.integration


def test_a_tenant_role_reads_and_writes_its_own_rows_only_and_cannot_mint_credits(postgres):
    url = postgres.create_database(f"creds_{uuid.uuid4().hex[:10]}")
    ledger, registry, store = CreditLedger(url, trial_credits=5), TenantRegistry(url), ServingStore(url)
    for tenant in ("acme", "globex"):
        registry.add(tenant)
        ledger.top_up(tenant, 1)
        store.issue_key(tenant)
    engine = create_engine(url)
    acme_url = role_url(url, "acme", grant_postgres_role(engine, "acme"))
    grant_postgres_role(engine, "globex")

    mine = CreditLedger(acme_url)
    assert mine.balances() == {"acme": 6.0} and mine.transactions("globex") == []
    meter = mine.open_meter("acme", "run-1", "finetuned_adapter", "gpu", 1, 0)  # a run bills itself
    mine.bill_meter(meter, 60_000, close=True)
    assert mine.account("acme").balance == 5.0
    with pytest.raises(DBAPIError, match="open its account"):
        mine.open_meter("globex", "run-2", "finetuned_adapter", "gpu", 1, 0)  # not on another's account
    with pytest.raises(DBAPIError, match="not add to them"):
        mine.top_up("acme", 100)
    with pytest.raises(DBAPIError, match="change its prices"):
        mine.set_price("acme", 0.0)
    assert mine.account("acme").balance == 5.0  # nothing of those was booked

    def refused(sql: str, match: str) -> None:  # raw SQL meets the same rules
        with pytest.raises(DBAPIError, match=match), create_engine(acme_url).begin() as conn:
            conn.execute(text(sql))

    with create_engine(acme_url).begin() as conn:
        assert conn.execute(text("UPDATE credit_accounts SET balance_micro = 0 WHERE tenant_id = 'globex'")).rowcount == 0
        assert conn.execute(text("SELECT count(*) FROM serving_api_keys")).scalar() == 1
    refused("DELETE FROM credit_accounts WHERE tenant_id = 'acme'", "permission denied")  # then reopen it richer
    refused("DELETE FROM credit_transactions WHERE tenant_id = 'acme'", "permission denied")  # erase usage
    refused("UPDATE meters SET tenant_id = 'globex'", "row-level security")
    refused("INSERT INTO credit_transactions (tenant_id, kind, amount_micro, balance_after_micro, resource_ms, note, at)"
            " VALUES ('acme', 'topup', 1000000, 0, 0, '', 0)", "row-level security")  # credits booked by hand
    refused("INSERT INTO tenants (tenant_id, created_at) VALUES ('acme-2', now())", "permission denied")
    assert [t.tenant_id for t in TenantRegistry(acme_url).list()] == ["acme"]
    assert ServingStore(acme_url).keys("globex") == [] and len(ServingStore(acme_url).keys("acme")) == 1
    with pytest.raises(DBAPIError, match="permission denied"):
        ServingStore(acme_url).issue_key("acme")  # keys are the platform's to issue
    # releases too (the serving control API records them): no canary promoted past the policy
    refused("INSERT INTO serving_releases (tenant_id, version, status) VALUES ('acme', 'v9', 'canary')",
            "permission denied")
    refused("UPDATE serving_releases SET canary_weight = 1 WHERE tenant_id = 'acme'", "permission denied")
    # a rotation grants exactly the rights listed: one granted before and no longer listed goes
    with engine.begin() as conn:
        conn.execute(text("GRANT INSERT, UPDATE ON serving_releases TO dc_tenant_acme"))
    acme_url = role_url(url, "acme", grant_postgres_role(engine, "acme"))
    refused("UPDATE serving_releases SET canary_weight = 1 WHERE tenant_id = 'acme'", "permission denied")
    # the platform's own role still sees everyone, and nothing of globex moved
    assert ledger.balances() == {"acme": 5.0, "globex": 6.0} and len(store.keys("globex")) == 1

    assert revoke_postgres_role(engine, "acme") and drop_postgres_role(engine, "acme")
    with pytest.raises(DBAPIError, match="dc_tenant_acme"):
        CreditLedger(acme_url).balances()
    assert not revoke_postgres_role(engine, "acme") and not drop_postgres_role(engine, "acme")
    revoke_postgres_role(engine, "globex")
    assert drop_postgres_role(engine, "globex")
    with pytest.raises(CredentialError):
        grant_postgres_role(create_engine(f"sqlite:///{postgres.data_dir}/x.db"), "acme")


def test_a_tenant_falkordb_user_reaches_its_own_graph_only(services, local_resources):
    import falkordb

    platform = local_resources["hot_graph"].store()
    admin = platform.client.connection
    for tenant in ("cred-a", "cred-b"):
        platform.create_scope(tenant)
    try:
        password = grant_falkordb_user(admin, "cred-a")
        mine = connect_hot_graph("127.0.0.1", services.falkordb_port, falkordb_user("cred-a"), password)
        mine.graph("cred-a").query("CREATE (:Entity {tenant_id: 'cred-a', name: 'x'})")
        assert mine.scope_exists("cred-a") and mine.node_count("cred-a") == 2
        for attempt in (lambda: mine.graph("cred-b").ro_query("MATCH (n) RETURN count(n)"),
                        lambda: mine.graph("cred-b").query("CREATE (:Entity)"),
                        lambda: mine.scope_exists("cred-b"),
                        lambda: mine.client.list_graphs(),
                        lambda: mine.client.connection.keys("*"),
                        lambda: mine.client.connection.scan(0),
                        lambda: mine.client.connection.randomkey(),
                        lambda: mine.client.connection.dbsize(),
                        lambda: mine.client.connection.get("datacreek_tenant_cred-b"),
                        lambda: mine.client.connection.flushall(),
                        lambda: mine.client.connection.execute_command("ACL", "LIST")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()
        assert platform.node_count("cred-b") == 1  # untouched
        assert revoke_falkordb_user(admin, "cred-a")
        with pytest.raises(redis.exceptions.AuthenticationError):
            falkordb.FalkorDB(port=services.falkordb_port, username=falkordb_user("cred-a"),
                              password=password).connection.ping()
    finally:
        revoke_falkordb_user(admin, "cred-a")
        for tenant in ("cred-a", "cred-b"):
            platform.drop_scope(tenant)
