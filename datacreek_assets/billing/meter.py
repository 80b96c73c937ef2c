"""A meter around a GPU-consuming step (or its CPU fallback), billing as it goes.

Opening refuses a tenant without credits. While the step runs, a heartbeat thread bills the
time since the last beat, so the balance is current and a killed process has been billed up to
its last beat (``CreditLedger.close_orphans`` then closes it). Leaving the block, normally or by
an exception, bills the rest and closes the meter. When a beat finds the balance below zero the
meter remembers it; the step calls ``check()`` at safe points and stops with ``QuotaExceeded``.
"""

from __future__ import annotations

import logging
import threading

from datacreek_assets.billing.ledger import CreditLedger, LedgerError, QuotaExceeded, now_ms

log = logging.getLogger(__name__)

FAILED_QUOTA = "failed_quota"
STATUS_TAG = "datacreek/status"


def step_process_started_ms(argv: list[str] | None = None) -> int | None:
    """When this process exists for one step, the time it started; None when steps share it.

    A Kubernetes step pod's container runs ``dagster api execute_step`` as its entrypoint, so
    the process starts with the container. The pod holds its GPU from then on: Python's start,
    the imports and the resources' setup are billed with the step. (Before it, the image pull
    is the pod's too; its start time is in the Kubernetes API, which a step does not read yet.)"""
    import sys

    import psutil

    if "execute_step" not in (sys.argv if argv is None else argv):
        return None
    return int(psutil.Process().create_time() * 1000)


class Meter:
    def __init__(self, ledger: CreditLedger, tenant_id: str, run_id: str, step: str, resource: str, units: int = 1,
                 heartbeat_s: float = 5.0, started_ms: int | None = None):
        """``started_ms``: when the billed resource became the step's, if before the meter opens
        (``step_process_started_ms``); the meter opens now otherwise."""
        self.ledger, self.tenant_id, self.run_id, self.step = ledger, tenant_id, run_id, step
        self.resource, self.units, self.heartbeat_s = resource, units, heartbeat_s
        self.started_ms = started_ms
        self.meter_id: str | None = None
        self.balance: float | None = None
        self._stop = threading.Event()
        self._over = threading.Event()
        self._lock = threading.Lock()

    def __enter__(self) -> "Meter":
        opened = now_ms()
        self.meter_id = self.ledger.open_meter(self.tenant_id, self.run_id, self.step, self.resource, self.units,
                                               min(self.started_ms or opened, opened))
        self._thread = threading.Thread(target=self._beat, name=f"meter-{self.meter_id[:8]}", daemon=True)
        self._thread.start()
        return self

    def _bill(self, close: bool) -> None:
        with self._lock:
            self.balance = self.ledger.bill_meter(self.meter_id, now_ms(), close=close)
        if self.balance < 0:
            self._over.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._bill(close=False)
            except Exception as err:  # noqa: BLE001 - a transient store error: the next beat bills the gap
                log.warning("meter %s: billing beat failed (%s); retrying at the next beat", self.meter_id, err)

    def check(self) -> None:
        """Raise QuotaExceeded once a beat has seen the tenant's balance below zero."""
        if self._over.is_set():
            raise QuotaExceeded(f"tenant {self.tenant_id!r} ran out of credits during {self.step} "
                                f"(balance {self.balance:.4f})")

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        self._thread.join()
        try:
            self._bill(close=True)
        except LedgerError as err:  # closed as orphaned meanwhile: billed to its last beat; never fail the step
            log.warning("meter %s: final bill refused (%s)", self.meter_id, err)
        return False
