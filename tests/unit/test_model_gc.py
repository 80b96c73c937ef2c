"""Model GC on a tenant's model directory: what is kept (best, live, newest, young) and what goes."""

import json
import os
from types import SimpleNamespace
from datetime import datetime, timedelta, timezone

from datacreek_assets.retention.model_gc import collect_garbage, list_trainings

NOW = datetime(2026, 12, 2, tzinfo=timezone.utc)


def training(tenant_dir, key, age_days, f1=None, finished=True):
    files = [tenant_dir / "runs" / key / "checkpoints" / "step-10" / "state.json",
             tenant_dir / "gguf" / key / "manifest.json"]
    if finished:
        files.append(tenant_dir / "runs" / key / "train.json")
    if f1 is not None:
        files.append(tenant_dir / "eval" / f"{key}.json")
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"tuned": {"f1": f1}, "run_key": key, "pad": "x" * 1000}))
        stamp = (NOW - timedelta(days=age_days)).timestamp()
        os.utime(path, (stamp, stamp))
    (tenant_dir / "runs" / key / "mlflow_run_id").write_text(f"mlflow-{key}")
    os.utime(tenant_dir / "runs" / key / "mlflow_run_id", (stamp, stamp))


def served(run_key, adapter=None):
    """A live release of a training, as the release store gives it."""
    return SimpleNamespace(version="v1", run_key=run_key, adapter=adapter)


class RecordingTracking:
    """Records which MLflow runs the collector asks to delete (MLflow itself: tests/integration)."""

    def __init__(self):
        self.deleted = []

    def delete_run(self, run_id):
        self.deleted.append(run_id)
        return True


def test_old_trainings_go_unless_best_live_or_newest(tmp_path):
    tenant_dir = tmp_path / "tenants" / "acme"
    training(tenant_dir, "k-best", 90, f1=0.41)
    training(tenant_dir, "k-worse", 80, f1=0.2)
    training(tenant_dir, "k-nan", 70, f1=float("nan"))  # not a number: never the best
    training(tenant_dir, "k-live", 60, f1=0.3)
    training(tenant_dir, "k-failed", 50, finished=False)
    training(tenant_dir, "k-latest", 40, f1=0.1)
    training(tenant_dir, "k-young", 3, f1=0.05)
    (tenant_dir / "latest.json").write_text(json.dumps({"run_key": "k-latest"}))
    live = [served("k-live")]

    dry = collect_garbage("acme", tenant_dir, live, RecordingTracking(), dry_run=True, now=NOW)
    assert sorted(dry.deleted) == ["k-failed", "k-nan", "k-worse"] and dry.freed_bytes == 0
    assert (tenant_dir / "runs" / "k-worse").exists()
    record = json.loads((tenant_dir / "gc" / "20261202T000000Z-dry-run.json").read_text())
    assert record["keep"]["k-best"] == ["best tuned_f1 (0.4100)"] and record["dry_run"]

    tracking = RecordingTracking()
    report = collect_garbage("acme", tenant_dir, live, tracking, now=NOW)
    assert report.kept == {"k-best": ["best tuned_f1 (0.4100)"], "k-live": ["live in serving"],
                           "k-latest": ["latest.json"], "k-young": ["newest", "younger than 30 days"]}
    assert sorted(tracking.deleted) == ["mlflow-k-failed", "mlflow-k-nan", "mlflow-k-worse"]
    assert sorted(t.run_key for t in list_trainings(tenant_dir)) == ["k-best", "k-latest", "k-live", "k-young"]
    assert not (tenant_dir / "eval" / "k-worse.json").exists() and not (tenant_dir / "gguf" / "k-nan").exists()
    assert report.freed_bytes > 0 and report.bytes_after == report.bytes_before - report.freed_bytes + len(
        (tenant_dir / "gc" / "20261202T000000Z.json").read_bytes())
    # a second collection finds nothing more to delete
    assert collect_garbage("acme", tenant_dir, live, tracking, now=NOW).deleted == []


def test_a_training_in_flight_stays_and_an_age_under_a_day_is_refused(tmp_path):
    import pytest

    tenant_dir = tmp_path / "t"
    training(tenant_dir, "k-resumed", 45)  # resumed from its checkpoints: no file written for weeks
    training(tenant_dir, "k-newer", 40, f1=0.3)
    (tenant_dir / "training_heartbeat.json").write_text(json.dumps({"state": "running", "run_key": "k-resumed"}))
    report = collect_garbage("t", tenant_dir, [], None, now=NOW)
    assert report.deleted == [] and report.kept["k-resumed"] == ["training in flight"]
    with pytest.raises(ValueError, match="at least a day"):
        collect_garbage("t", tenant_dir, [], None, now=NOW, max_age=timedelta(hours=1))


def test_the_best_is_chosen_by_value_not_by_name_or_time(tmp_path):
    tenant_dir = tmp_path / "t"
    training(tenant_dir, "z-best", 40, f1=0.9)  # "z" sorts last; it is the best by value
    training(tenant_dir, "a-older", 50, f1=0.35)
    training(tenant_dir, "m-newest", 35, f1=0.1)
    report = collect_garbage("t", tenant_dir, [], None, now=NOW)
    assert report.deleted == ["a-older"]
    assert report.kept == {"z-best": ["best tuned_f1 (0.9000)"], "m-newest": ["newest"]}


def test_a_training_on_purged_data_is_kept_only_while_it_serves(tmp_path):
    from datacreek_assets.erasure.documents import mark_purged_trainings

    tenant_dir = tmp_path / "t"
    training(tenant_dir, "k-best-tainted", 40, f1=0.9)
    training(tenant_dir, "k-live-tainted", 45, f1=0.2)
    training(tenant_dir, "k-young-tainted", 2, f1=0.1)
    training(tenant_dir, "k-clean", 50, f1=0.3)
    mark_purged_trainings(tenant_dir, ["k-best-tainted", "k-live-tainted"])
    mark_purged_trainings(tenant_dir, ["k-young-tainted"])  # merged with what is recorded
    live = [served("k-live-tainted")]
    report = collect_garbage("t", tenant_dir, live, None, now=NOW)
    assert sorted(report.deleted) == ["k-best-tainted", "k-young-tainted"]
    assert report.kept == {"k-live-tainted": ["live in serving"], "k-clean": ["best tuned_f1 (0.3000)"]}


def test_a_deleted_trainings_published_adapter_goes_unless_a_live_release_serves_the_same_file(tmp_path):
    from datacreek_assets.object_store import LocalObjectStore, TenantObjectStore
    from datacreek_assets.serving.model_files import publish_adapter

    store = LocalObjectStore(tmp_path / "bucket")
    tenant_dir = tmp_path / "t"
    refs = {}
    for key, age, content in (("k-old", 60, b"old adapter"), ("k-twin", 50, b"same bytes"),
                              ("k-live", 45, b"same bytes"), ("k-best", 40, b"best adapter")):
        training(tenant_dir, key, age, f1=0.9 if key == "k-best" else 0.1)
        adapter = tenant_dir / "gguf" / key / "adapter.gguf"
        adapter.write_bytes(content)
        (tenant_dir / "gguf" / key / "manifest.json").write_text(json.dumps({"lora": {"path": str(adapter)}}))
        for path in (adapter, tenant_dir / "gguf" / key / "manifest.json"):
            stamp = (NOW - timedelta(days=age)).timestamp()
            os.utime(path, (stamp, stamp))
        refs[key] = publish_adapter(store, "t", adapter)

    report = collect_garbage("t", tenant_dir, [served("k-live", refs["k-live"])], None, now=NOW,
                             objects=TenantObjectStore(store, "t"))
    assert sorted(report.deleted) == ["k-old", "k-twin"]
    assert not store.exists(refs["k-old"].key)
    assert refs["k-twin"].key == refs["k-live"].key and store.exists(refs["k-live"].key)  # still served
    assert store.exists(refs["k-best"].key)
