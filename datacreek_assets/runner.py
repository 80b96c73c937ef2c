"""Materialize a tenant's assets in-process against the persistent Dagster
instance (so the runs show up in the UI), with progress read back from the
instance's event log while the run executes: the assets done, the one being
built and, while it trains, the training's step, total steps and loss."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import dagster as dg

from datacreek_assets.signals import let_children_take_default_signals
from datacreek_assets.tenancy import TENANT_TAG

LAUNCH_TOKEN_TAG = "datacreek/launch-token"  # one launch's own tag: its run is found by it while it runs


class UnknownAsset(ValueError):
    pass


@dataclass
class RunSummary:
    run_id: str
    success: bool
    seconds: float
    materialized: list[str] = field(default_factory=list)
    metadata: dict[str, dict] = field(default_factory=dict)
    error: str | None = None


def tenant_tags(tenant_id: str, launched_by: str) -> dict[str, str]:
    return {TENANT_TAG: tenant_id, "datacreek/launched-by": launched_by}


def main_graph(defs: dg.Definitions) -> list[str]:
    """Every asset a tenant's full run builds: all but those a sensor launches when live
    traffic says so (production_release) and the external ones services keep (hot_graph)."""
    from datacreek_assets.defs.serving.assets import LAUNCH_TAG

    graph = defs.resolve_asset_graph()
    return sorted(k.to_user_string() for k in graph.executable_asset_keys
                  if graph.get(k).tags.get(LAUNCH_TAG) != "sensor")


def _while_running(read, *args):
    """``read(*args)`` made while the run writes to the same instance, or None if the instance
    refused it for now: an in-memory instance's SQLite answers "database table is locked" to a
    read that meets a write. The caller reads again on its next tick (the final reads, after the
    run, meet no writer)."""
    from sqlalchemy.exc import OperationalError

    try:
        return read(*args)
    except OperationalError as err:
        if "locked" not in str(err):
            raise
        return None


def _run_launched_with(instance: dg.DagsterInstance, token: str) -> str | None:
    runs = instance.get_runs(filters=dg.RunsFilter(tags={LAUNCH_TOKEN_TAG: token}), limit=1)
    return runs[0].run_id if runs else None


def _materializations(instance: dg.DagsterInstance, run_id: str) -> list[dg.EventLogEntry]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    return [r.event_log_entry for r in records]


_STEP_EVENTS = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE,
                dg.DagsterEventType.STEP_SKIPPED}


def _running_step(instance: dg.DagsterInstance, run_id: str) -> tuple[str, float] | None:
    """(step key, start time) of the step the run executes now (an in-process run executes one
    at a time), or None."""
    running = None
    for record in instance.get_records_for_run(run_id, of_type=_STEP_EVENTS).records:
        entry = record.event_log_entry
        if entry.dagster_event.event_type == dg.DagsterEventType.STEP_START:
            running = (entry.step_key, entry.timestamp)
        elif running and entry.step_key == running[0]:
            running = None
    return running


def activity_line(step_key: str, training: tuple[int, int, float] | None) -> str:
    """What the run does now, in one line: 'building gguf_model', 'finetuned_adapter: step 12/40, loss 2.3140'."""
    if training is None:
        return f"building {step_key}"
    step, total, loss = training
    return f"{step_key}: step {step}/{total}, loss {loss:.4f}"


def materialize_tenant(
    defs: dg.Definitions,
    tenant_id: str,
    instance: dg.DagsterInstance,
    selection: list[str] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    launched_by: str = "cli",
    run_config: dict | None = None,
    tags: dict[str, str] | None = None,
    on_activity: Callable[[str], None] | None = None,
    console_log_level: str = "WARNING",
) -> RunSummary:
    """Run the tenant's ``selection`` (default: the main graph) in this process and wait for it.

    ``on_progress(key, done, total)`` is called as each asset is materialized;
    ``on_activity(line)`` with what the run does now (see ``activity_line``), when that changes.
    ``console_log_level``: what of the run's log reaches the terminal (the event log keeps everything).
    """
    # Without this, a run started in the background waits 30 s per step for its log tailers
    # (signals.py). The run executes on a worker thread, where Dagster changes no signal handler.
    let_children_take_default_signals()
    job = defs.resolve_implicit_global_asset_job_def()
    graph = defs.resolve_asset_graph()
    all_keys = sorted(k.to_user_string() for k in graph.executable_asset_keys)
    wanted = selection or main_graph(defs)
    unknown = sorted(set(wanted) - set(all_keys))
    if unknown:
        raise UnknownAsset(f"unknown asset(s): {', '.join(unknown)}; known: {', '.join(all_keys)}")
    token = uuid.uuid4().hex
    tags = {**(tags or {}), **tenant_tags(tenant_id, launched_by), LAUNCH_TOKEN_TAG: token}
    outcome: dict = {}
    training: dict[str, tuple] = {}  # the latest training step and when it ended, set in the run's thread

    def observe(step: int, total: int, loss: float) -> None:
        training["last"] = (step, total, loss, time.time())

    def run() -> None:
        if on_activity is not None:
            from datacreek_assets.finetune.training import STEP_OBSERVER

            STEP_OBSERVER.set(observe)  # in this thread's context: no other run sees it
        try:
            outcome["result"] = job.execute_in_process(
                partition_key=tenant_id,
                instance=instance,
                tags=tags,
                asset_selection=[dg.AssetKey.from_user_string(k) for k in wanted],
                raise_on_error=False,
                # the event log keeps everything; the terminal shows warnings and the progress bar
                run_config={**(run_config or {}), "loggers": {"console": {"config": {"log_level": console_log_level}}}},
            )
        except Exception as err:  # surfaced to the caller below
            outcome["error"] = err

    started = time.monotonic()
    worker = threading.Thread(target=run, name=f"materialize-{tenant_id}")
    worker.start()
    run_id = None
    done: set[str] = set()
    shown = None
    while worker.is_alive():
        worker.join(0.5)
        if run_id is None:
            run_id = _while_running(_run_launched_with, instance, token)
        if run_id and on_progress:
            for entry in _while_running(_materializations, instance, run_id) or []:
                key = entry.dagster_event.asset_key.to_user_string()
                if key not in done:
                    done.add(key)
                    on_progress(key, len(done), len(wanted))
        running = _while_running(_running_step, instance, run_id) if run_id and on_activity else None
        if running:
            step_key, started_at = running
            last = training.get("last")  # a training's steps belong to the step that runs it
            line = activity_line(step_key, last[:3] if last and last[3] >= started_at else None)
            if line != shown:
                shown = line
                on_activity(line)
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    summary = RunSummary(result.run_id, result.success, time.monotonic() - started)
    for entry in _materializations(instance, result.run_id):
        mat = entry.dagster_event.event_specific_data.materialization
        key = mat.asset_key.to_user_string()
        summary.materialized.append(key)
        summary.metadata[key] = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
        if on_progress and key not in done:
            done.add(key)
            on_progress(key, len(done), len(wanted))
    if not result.success:
        failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
        summary.error = "; ".join(
            f"{e.step_key}: {e.event_specific_data.error.message.strip()}" for e in failures
        ) or "run failed"
    return summary
