"""The router's decisions and the release store, without Ray: split, windows, verdicts, keys."""

import hashlib

import pytest

from datacreek_assets.serving.model_files import ModelFileError, ModelRef
from datacreek_assets.serving.release_store import Release, ReleaseConflict, ServingStore
from datacreek_assets.serving.routing import (
    CanaryPolicy,
    InvalidVersion,
    LatencyWindow,
    Route,
    WindowStats,
    canary_bucket,
    deployment_name,
    judge_canary,
    percentile,
)
from datacreek_assets.tenancy import InvalidTenantId


def test_the_split_sends_the_weight_to_the_canary_and_is_sticky_per_request_id():
    route = Route("v1", "v2", 0.05)
    sides = [route.choose("acme", f"id-{i}")[1] for i in range(100_000)]
    share = sides.count("canary") / len(sides)
    assert abs(share - 0.05) < 0.003  # sd 0.07 %
    # tenants split independently: the same request ids do not pick the same canary requests
    other = [Route("v1", "v2", 0.05).choose("globex", f"id-{i}")[1] for i in range(100_000)]
    both = sum(a == b == "canary" for a, b in zip(sides, other))
    assert both < 0.0025 * 100_000 * 2
    assert Route("v1", "v2", 0.0).choose("acme", "x") == ("v1", "production")
    assert {Route("v1", "v2", 1.0).choose("acme", f"{i}")[1] for i in range(100)} == {"canary"}
    assert 0 <= canary_bucket("acme", "") < 10_000


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan")])
def test_a_route_refuses_impossible_weights(weight):
    with pytest.raises(ValueError):
        Route("v1", "v2", weight)


@pytest.mark.parametrize("version", ["v0", "V1", "v1 ", "latest", "../v1", "", None, "v" + "1" * 12])
def test_versions_are_base_or_v_number(version):
    with pytest.raises(InvalidVersion):
        deployment_name("acme", version)


def test_deployment_names_validate_the_tenant():
    assert deployment_name("acme", "v3") == "acme-v3" and deployment_name("acme", "base") == "acme-base"
    with pytest.raises(InvalidTenantId):
        deployment_name("Acme", "v1")


def test_latency_window_forgets_old_samples_and_interpolates_like_numpy():
    np = pytest.importorskip("numpy")
    window = LatencyWindow(window_s=10)
    for i in range(100):
        window.add(i / 1000, now=float(i))
    stats = window.stats(now=100.0)
    assert stats.count == 10  # samples from t=90..99
    values = [i / 1000 for i in range(90, 100)]
    assert stats.p99_s == pytest.approx(np.percentile(values, 99))
    assert stats.p50_s == pytest.approx(np.percentile(values, 50))
    assert window.stats(now=1000.0) == WindowStats(0, None, None)
    assert percentile([3.0], 99) == 3.0


def stats(count: int, p99: float) -> WindowStats:
    return WindowStats(count, p99 / 2, p99)


def test_verdicts():
    policy = CanaryPolicy(min_requests=20, max_p99_ratio=2.0, min_p99_gap_s=0.025, promote_after_s=60,
                          promote_min_requests=50)
    assert judge_canary(stats(19, 9.0), stats(500, 0.1), 19, 600, policy).action == "wait"
    assert judge_canary(stats(40, 0.1), stats(19, 0.1), 40, 600, policy).action == "wait"
    rollback = judge_canary(stats(20, 0.5), stats(400, 0.1), 20, 5, policy)
    assert rollback.action == "rollback" and "500.0 ms" in rollback.reason and "100.0 ms" in rollback.reason
    assert rollback.numbers()["canary_p99_s"] == 0.5
    # twice as slow but by 4 ms: jitter, not a regression
    assert judge_canary(stats(30, 0.008), stats(400, 0.004), 30, 5, policy).action == "keep"
    assert judge_canary(stats(30, 0.19), stats(400, 0.1), 30, 5, policy).action == "keep"
    assert judge_canary(stats(30, 0.19), stats(400, 0.1), 49, 600, policy).action == "keep"  # volume
    assert judge_canary(stats(30, 0.19), stats(400, 0.1), 50, 59, policy).action == "keep"  # duration
    assert judge_canary(stats(30, 0.19), stats(400, 0.1), 50, 60, policy).action == "promote"


def test_a_failing_canary_is_rolled_back_for_its_errors():
    policy = CanaryPolicy(min_requests=20, max_error_rate=0.05)
    fast = WindowStats(40, 0.01, 0.02, errors=0)
    failing = judge_canary(WindowStats(40, 0.01, 0.02, errors=3), fast, 40, 5, policy)
    assert failing.action == "rollback" and "3 of 40" in failing.reason
    assert failing.numbers()["canary_errors_in_window"] == 3
    # no worse than production (both sides failing: not the canary's fault)
    assert judge_canary(WindowStats(40, 0.01, 0.02, errors=3), WindowStats(400, 0.01, 0.02, errors=40), 40, 5,
                        policy).action == "keep"
    window = LatencyWindow(window_s=60)
    for i in range(10):
        window.add(0.01, now=float(i), ok=i % 5 != 0)
    assert window.stats(now=10.0).errors == 2 and window.stats(now=10.0).error_rate == 0.2


@pytest.mark.parametrize("changes", [{"min_requests": 0}, {"max_p99_ratio": 1.0}, {"promote_after_s": -1},
                                     {"min_p99_gap_s": -0.1}, {"max_error_rate": 0.0}])
def test_a_policy_refuses_nonsense(changes):
    with pytest.raises(ValueError):
        CanaryPolicy(**changes)


BASE = ModelRef("models/base/" + "b" * 64 + ".gguf", "b" * 64, 258 << 20)
A1 = ModelRef("tenants/acme/models/adapters/" + "1" * 64 + ".gguf", "1" * 64, 9 << 20)
A2 = ModelRef("tenants/acme/models/adapters/" + "2" * 64 + ".gguf", "2" * 64, 9 << 20)


@pytest.fixture
def store(sql_url):
    store = ServingStore(sql_url)  # SQLite and PostgreSQL
    yield store
    store.close()


def test_api_keys_are_stored_hashed_and_scoped_to_their_tenant(store):
    from sqlalchemy import text

    key_id, key = store.issue_key("acme")
    assert store.tenant_for_key(key) == "acme"
    assert store.tenant_for_key(key + "x") is None and store.tenant_for_key("") is None
    assert store.tenant_for_key("dck_" + "a" * 200) is None
    with store.engine.connect() as conn:  # every stored cell, whatever the backend
        raw = " ".join(str(cell) for row in conn.execute(text("SELECT * FROM serving_api_keys")) for cell in row)
    assert key not in raw and hashlib.sha256(key.encode()).hexdigest() in raw
    assert not store.revoke_key("globex", key_id)  # another tenant cannot revoke it
    assert store.tenant_for_key(key) == "acme"
    assert store.revoke_key("acme", key_id) and store.tenant_for_key(key) is None
    with pytest.raises(InvalidTenantId):
        store.issue_key("../acme")


def test_release_lifecycle_and_conflicts(store):
    store.start("acme", "base", "production", BASE, None)
    store.start("acme", "v1", "canary", BASE, A1, 0.05, run_key="k1")
    assert store.route("acme") == Route("base", "v1", 0.05)
    assert (store.release("acme", "v1").model, store.release("acme", "v1").adapter) == (BASE, A1)
    assert store.release("acme", "v1").run_key == "k1" and store.release("acme", "base").run_key is None
    with pytest.raises(ModelFileError, match="may not be served"):  # another tenant's adapter
        store.start("globex", "v1", "canary", BASE, A1, 0.05)
    with pytest.raises(ReleaseConflict):
        store.start("acme", "v2", "canary", BASE, A2, 0.05)  # one canary at a time
    with pytest.raises(ReleaseConflict):
        store.end("acme", "base", "rolled_back", "a rollback is for canaries", expect="canary")
    assert store.route("globex") is None and store.live("globex") == {}
    store.end("acme", "v1", "rolled_back", "slow", {"canary_p99_s": 0.5})
    assert store.route("acme") == Route("base")
    with pytest.raises(ReleaseConflict):
        store.start("acme", "v1", "canary", BASE, A1, 0.05)  # never the same version again
    with pytest.raises(ReleaseConflict):
        store.promote("acme", "v1", "x")  # not live
    store.start("acme", "v2", "canary", BASE, A2, 0.05)
    retired = store.promote("acme", "v2", "healthy")
    assert retired.version == "base" and store.route("acme") == Route("v2")
    assert [(r.version, r.status) for r in store.releases("acme")] == [
        ("base", "retired"), ("v1", "rolled_back"), ("v2", "production")]
    assert store.release("acme", "v1").numbers == {"canary_p99_s": 0.5}
    assert store.all_routes() == {"acme": Route("v2")}
    store.forget_tenant("acme")
    assert store.releases("acme") == []


def test_live_releases_and_drill_delays(store, monkeypatch):
    from datacreek_assets.serving.release_store import replica_store_url

    store.start("acme", "base", "production", BASE, None)
    store.start("acme", "v1", "canary", BASE, A1, 0.05)
    store.start("globex", "base", "production", BASE, None)
    assert {(r.tenant_id, r.version) for r in store.live_releases()} == {("acme", "base"), ("acme", "v1"),
                                                                      ("globex", "base")}
    store.set_injected_delay("acme", "v1", 0.25)
    assert store.release("acme", "v1").injected_delay_s == 0.25 and store.release("acme", "base").injected_delay_s == 0
    for bad in (-1.0, 61.0):
        with pytest.raises(ValueError):
            store.set_injected_delay("acme", "v1", bad)
    store.end("acme", "v1", "rolled_back", "slow")
    with pytest.raises(ReleaseConflict):  # a drill on what is not live
        store.set_injected_delay("acme", "v1", 0.0)
    assert ("acme", "v1") not in {(r.tenant_id, r.version) for r in store.live_releases()}
    # the router and the pools read the store with their own pods' URL where they have one
    monkeypatch.delenv("DATACREEK_SERVING_STORE_URL", raising=False)
    assert replica_store_url("sqlite:///given.db") == "sqlite:///given.db"
    monkeypatch.setenv("DATACREEK_SERVING_STORE_URL", "postgresql+psycopg://platform@db/serving")
    assert replica_store_url("postgresql+psycopg://dc_tenant_acme@db/serving") == "postgresql+psycopg://platform@db/serving"


def test_a_release_store_made_before_model_digests_gains_their_columns(sql_url, tmp_path):
    """A table from when releases held local paths: opened, it gains the new nullable columns. Its
    old rows read back with their paths and the training they serve (for model GC and erasure);
    the first deploy publishes their files and records keys and digests in their place."""
    from sqlalchemy import create_engine, text

    from datacreek_assets.serving.control import ServingControl, ServingError
    from datacreek_assets.serving.model_files import ModelSource

    base, adapter = tmp_path / "base.gguf", tmp_path / "tenants" / "acme" / "gguf" / "k7" / "adapter.gguf"
    adapter.parent.mkdir(parents=True)
    base.write_bytes(b"base weights")
    adapter.write_bytes(b"adapter weights")
    engine = create_engine(sql_url)
    with engine.begin() as conn:
        key = "SERIAL PRIMARY KEY" if engine.dialect.name == "postgresql" else "INTEGER PRIMARY KEY"
        conn.execute(text(f"CREATE TABLE serving_releases (id {key}, tenant_id VARCHAR(40), "
                          "version VARCHAR(16), status VARCHAR(16), live_role VARCHAR(16), model_path TEXT NOT NULL, "
                          "adapter_path TEXT, canary_weight FLOAT, started_at TIMESTAMP WITH TIME ZONE, "
                          "ended_at TIMESTAMP WITH TIME ZONE, reason TEXT, numbers TEXT, "
                          "UNIQUE (tenant_id, version), UNIQUE (tenant_id, live_role))"))
        for version, role, adapter_path in (("base", "production", None), ("v3", "canary", str(adapter))):
            conn.execute(text("INSERT INTO serving_releases (tenant_id, version, status, live_role, model_path, "
                              "adapter_path, canary_weight, started_at) VALUES ('acme', :v, :r, :r, :m, :a, 0.05, "
                              "CURRENT_TIMESTAMP)"), {"v": version, "r": role, "m": str(base), "a": adapter_path})
    engine.dispose()
    for _ in range(2):  # and opening it again changes nothing more
        store = ServingStore(sql_url)
        old = store.release("acme", "v3")
        assert old.model is None and old.legacy_files == (str(base), str(adapter)) and old.run_key == "k7"
        assert store.release("acme", "base").run_key is None and store.route("acme") == Route("base", "v3", 0.05)
        store.close()

    source = ModelSource("local", str(tmp_path / "cache"), root=str(tmp_path / "bucket"))
    control = ServingControl("", 0, sql_url, "admin-token-of-this-test", model_source=source)
    adopted = control.adopt_legacy_files(control.store.release("acme", "v3"))
    assert adopted.model.key.startswith("models/base/") and adopted.adapter.key.startswith("tenants/acme/models/adapters/")
    assert control.store.release("acme", "v3") == adopted and adopted.run_key == "k7" and adopted.legacy_files is None
    assert source.cache().fetch_all([adopted.model, adopted.adapter], "acme")[1].read_bytes() == b"adapter weights"
    # a row naming files the pipeline did not write for this tenant is not published for it
    theirs = tmp_path / "tenants" / "globex" / "gguf" / "k1" / "adapter.gguf"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"globex's adapter")
    for files, why in (((str(base), str(theirs)), "outside its tenant's trainings"),
                       ((str(adapter), None), "inside a tenant's folder")):
        forged = Release("acme", "v9", "canary", None, None, 0.05, None, None, None, {}, None, files)
        with pytest.raises(ServingError, match=why):
            control.adopt_legacy_files(forged)
    assert not [k for k in source.store().list("tenants/acme") if "adapters" in k and k != adopted.adapter.key]
    base.unlink()
    with pytest.raises(ServingError, match="gone"):
        control.adopt_legacy_files(control.store.release("acme", "base"))
    control.store.end("acme", "v3", "retired", "replaced")  # and new rows are written as before
    assert control.store.start("acme", "v4", "canary", BASE, A1, 0.05).adapter == A1
    control.close()
