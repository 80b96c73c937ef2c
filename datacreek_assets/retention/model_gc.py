"""Garbage collection of a tenant's trainings: checkpoints, run folders, GGUF files, MLflow artifacts.

A training is everything one run key left behind: ``runs/<key>/`` (checkpoints, adapter,
``train.json``, its MLflow run id), ``gguf/<key>/`` and ``eval/<key>.json``. One older than the
age limit (by its newest file) is deleted unless it is kept, and it is kept when it is:
- the tenant's best by its evaluation metric (tuned F1 with retrieval, higher is better; compared
  as numbers, never by name or time),
- live in serving (a production or canary release serves it).
- the newest training (``latest.json``, and the most recently written).
A training that learnt from a purged document loses the "best", "newest" and "young" reasons.
The plan, with the reason each training is kept, is written (by rename) to ``gc/`` before anything
is deleted, so an interrupted collection leaves a record of what had to stay. A deleted training's
adapter, published to the object store when it was released, goes too, unless a live release
names the same file.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from datacreek_assets.finetune.training import write_json_atomic

MAX_AGE = timedelta(days=30)
# the metric a training is ranked by, and which way is better
BEST_BY = ("tuned_f1", "max")


@dataclass
class Training:
    run_key: str
    paths: list[Path]
    written_at: datetime
    metric: float | None
    mlflow_run_id: str | None
    bytes: int


def _stats(path: Path):
    """Stat every file under ``path`` (or ``path`` itself), skipping files removed while walking:
    checkpoint rotation and collections run beside the walkers."""
    for item in ([path] if path.is_file() else path.rglob("*")):
        try:
            if item.is_file() and not item.is_symlink():
                yield item.stat()
        except OSError:
            continue


def tree_bytes(path: Path) -> int:
    return sum(st.st_size for st in _stats(path))


def _newest_mtime(path: Path) -> float:
    return max((st.st_mtime for st in _stats(path)), default=path.stat().st_mtime)


def _metric(eval_file: Path) -> float | None:
    """The training's score for BEST_BY; None when it was never evaluated or the score is not a number."""
    if not eval_file.is_file():
        return None
    try:
        value = float(json.loads(eval_file.read_text())["tuned"]["f1"])
    except (ValueError, KeyError, TypeError):
        return None
    return value if math.isfinite(value) else None


def list_trainings(tenant_dir: Path) -> list[Training]:
    keys = {p.name for folder in ("runs", "gguf") if (tenant_dir / folder).is_dir()
            for p in (tenant_dir / folder).iterdir() if p.is_dir()}
    keys |= {p.stem for p in (tenant_dir / "eval").glob("*.json") if p.stem != "latest"} if (
        tenant_dir / "eval").is_dir() else set()
    trainings = []
    for key in sorted(keys):
        paths = [p for p in (tenant_dir / "runs" / key, tenant_dir / "gguf" / key, tenant_dir / "eval" / f"{key}.json")
                 if p.exists()]
        run_file = tenant_dir / "runs" / key / "mlflow_run_id"
        trainings.append(Training(
            key, paths, datetime.fromtimestamp(max(_newest_mtime(p) for p in paths), timezone.utc),
            _metric(tenant_dir / "eval" / f"{key}.json"),
            run_file.read_text().strip() if run_file.is_file() else None, sum(tree_bytes(p) for p in paths)))
    return trainings


def published_adapters(tenant_dir: Path, run_key: str) -> list[str]:
    """Object keys (relative to the tenant's scope) the training's adapter has when published."""
    from datacreek_assets.object_store import file_sha256
    from datacreek_assets.serving.model_files import ADAPTER_FOLDER

    manifest = tenant_dir / "gguf" / run_key / "manifest.json"
    try:
        adapter = Path(json.loads(manifest.read_text())["lora"]["path"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [f"{ADAPTER_FOLDER}/{file_sha256(adapter)}.gguf"] if adapter.is_file() else []


@dataclass
class GcPlan:
    keep: dict[str, list[str]] = field(default_factory=dict)  # run key -> why it stays
    delete: list[str] = field(default_factory=list)


def plan_gc(trainings: list[Training], live_run_keys: set[str], latest_key: str | None, now: datetime,
            max_age: timedelta = MAX_AGE, in_flight: str | None = None, purged: set[str] = frozenset()) -> GcPlan:
    """``purged``: trainings that learnt from purged documents. They are kept only while serving,
    in flight or named by latest.json (which the requested retraining replaces), never as best or young."""
    if max_age < timedelta(days=1):
        raise ValueError(f"model GC keeps trainings at least a day, not {max_age}")
    plan = GcPlan()
    reasons: dict[str, list[str]] = {t.run_key: [] for t in trainings}
    if in_flight in reasons:  # a resumed training may not have written a file for a while yet
        reasons[in_flight].append("training in flight")
    scored = [t for t in trainings if t.metric is not None and t.run_key not in purged]
    if scored:
        sign = 1 if BEST_BY[1] == "max" else -1
        best = max(scored, key=lambda t: (sign * t.metric, t.written_at))
        reasons[best.run_key].append(f"best {BEST_BY[0]} ({best.metric:.4f})")
    if trainings:
        reasons[max(trainings, key=lambda t: t.written_at).run_key].append("newest")
    if latest_key in reasons:
        reasons[latest_key].append("latest.json")
    for training in trainings:
        if training.run_key in live_run_keys:
            reasons[training.run_key].append("live in serving")
        if now - training.written_at <= max_age:
            reasons[training.run_key].append(f"younger than {max_age.days} days")
    for key in purged & reasons.keys():
        reasons[key] = [r for r in reasons[key] if r in ("live in serving", "latest.json", "training in flight")]
    for key, why in reasons.items():
        if why:
            plan.keep[key] = sorted(set(why))
        else:
            plan.delete.append(key)
    return plan


@dataclass
class GcReport:
    tenant_id: str
    dry_run: bool
    kept: dict[str, list[str]]
    deleted: list[str]
    freed_bytes: int
    mlflow_runs_deleted: int
    bytes_before: int
    bytes_after: int
    record: str

    def as_metadata(self) -> dict:
        return {"dry_run": self.dry_run, "kept": len(self.kept), "deleted": len(self.deleted),
                "freed_bytes": self.freed_bytes, "mlflow_runs_deleted": self.mlflow_runs_deleted,
                "tenant_bytes_before": self.bytes_before, "tenant_bytes_after": self.bytes_after,
                "record": self.record,
                "kept_trainings": {key: ", ".join(why) for key, why in self.kept.items()},
                "deleted_trainings": self.deleted}


def collect_garbage(tenant_id: str, tenant_dir: Path, live_releases: list, tracking=None, dry_run: bool = False,
                    now: datetime | None = None, max_age: timedelta = MAX_AGE, objects=None) -> GcReport:
    """``live_releases``: the tenant's live releases (``ServingStore.live(...).values()``);
    ``objects``: its TenantObjectStore, where released adapters were published (None: not looked at)."""
    now = now or datetime.now(timezone.utc)
    before = tree_bytes(tenant_dir) if tenant_dir.exists() else 0
    trainings = {t.run_key: t for t in list_trainings(tenant_dir)}
    latest = tenant_dir / "latest.json"
    latest_key = json.loads(latest.read_text()).get("run_key") if latest.is_file() else None
    heartbeat = tenant_dir / "training_heartbeat.json"
    beat = json.loads(heartbeat.read_text()) if heartbeat.is_file() else {}
    in_flight = beat.get("run_key") if beat.get("state") in ("running", "interrupted") else None
    from datacreek_assets.erasure.documents import purged_trainings, remove_copies

    plan = plan_gc(list(trainings.values()), {r.run_key for r in live_releases if r.run_key}, latest_key, now,
                   max_age, in_flight, purged_trainings(tenant_dir))
    served = {r.adapter.key for r in live_releases if r.adapter is not None}
    record = tenant_dir / "gc" / f"{now:%Y%m%dT%H%M%SZ}{'-dry-run' if dry_run else ''}.json"
    write_json_atomic(record, {"at": now.isoformat(), "dry_run": dry_run, "keep": plan.keep, "delete": plan.delete,
                               "best_by": list(BEST_BY), "max_age_days": max_age.days})
    freed, mlflow_deleted = 0, 0
    if not dry_run:
        for key in plan.delete:
            training = trainings[key]
            if tracking is not None and training.mlflow_run_id:
                mlflow_deleted += tracking.delete_run(training.mlflow_run_id)
            if objects is not None:  # before the local file its key is computed from
                for relative in published_adapters(tenant_dir, key):
                    if objects.key(relative) not in served:  # every stored copy (a versioned bucket's too)
                        remove_copies(objects, relative, keep_latest=False)
            for path in training.paths:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            freed += training.bytes
    for old in sorted((tenant_dir / "gc").glob("*.json"))[:-1]:  # the records themselves expire too
        try:
            at = datetime.fromisoformat(json.loads(old.read_text())["at"])
        except (OSError, ValueError, KeyError):
            continue
        if now - at > max_age:
            old.unlink(missing_ok=True)
    after = tree_bytes(tenant_dir) if tenant_dir.exists() else 0
    return GcReport(tenant_id, dry_run, plan.keep, plan.delete, freed if not dry_run else 0, mlflow_deleted,
                    before, after, str(record))
