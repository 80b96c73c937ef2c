"""Quota controller, the running half: stop the GPU runs of tenants whose credits ran out.

Each tick closes meters whose process stopped heart-beating (billed until their last beat),
then, for every tenant whose balance is below zero, terminates the runs that hold an open meter
and tags them `datacreek/status=failed_quota`. A step that cannot be terminated from outside
(an in-process run) stops itself at its next `Meter.check()`. Other tenants' runs, and the
tenant's runs without GPU work, are left alone. Stateless: no cursor.
"""

import dagster as dg

from datacreek_assets.billing.meter import FAILED_QUOTA, STATUS_TAG
from resources.stores import CreditLedgerResource


def over_quota_runs(ledger) -> dict[str, str]:
    """run_id -> tenant for runs with an open meter whose tenant's balance is below zero."""
    balances = ledger.balances()
    return {m.run_id: m.tenant_id for m in ledger.meters(status="open") if balances.get(m.tenant_id, 0.0) < 0}


@dg.sensor(minimum_interval_seconds=15, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Stops the GPU runs of tenants whose credit balance fell below zero (failed_quota).")
def quota_sensor(context: dg.SensorEvaluationContext, credit_ledger: CreditLedgerResource) -> dg.SkipReason:
    ledger = credit_ledger.ledger()
    orphans = ledger.close_orphans(stale_after_ms=int(3 * credit_ledger.heartbeat_s * 1000))
    stopped = []
    for run_id, tenant in over_quota_runs(ledger).items():
        run = context.instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            continue
        context.instance.add_run_tags(run_id, {STATUS_TAG: FAILED_QUOTA})
        try:
            terminated = context.instance.run_launcher.terminate(run_id)
        except Exception:  # noqa: BLE001 - launchers without termination (in-process runs) raise
            terminated = False
        context.log.warning(f"{tenant}: out of credits, run {run_id} " + (
            "terminated (failed_quota)" if terminated else "tagged failed_quota; its step stops at its next check"))
        stopped.append(run_id)
    return dg.SkipReason(f"closed {len(orphans)} orphaned meter(s); stopped {len(stopped)} run(s) over quota")
