"""The tenant's last training step, on disk.

A training stopped from outside leaves its heartbeat `running` (SIGKILL) or `interrupted`
(SIGTERM of a reclaimed spot node, which Dagster turns into an interrupt); the attempt that
picks the training up again (the step's retry, on on-demand GPUs or as the CPU fallback)
reads how long ago the last beat was: the reschedule latency. A training that ends
in Python (finished, failed, stopped by its quota) closes the heartbeat as finished or
stopped, so a later run does not mistake it for an eviction.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from datacreek_assets.finetune.training import write_json_atomic


class TrainingHeartbeat:
    def __init__(self, path: Path):
        self.path = path

    def rescheduled_after(self, now: float | None = None) -> float | None:
        """Seconds since the last beat of an interrupted training, or None."""
        try:
            last = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if last.get("state") not in ("running", "interrupted"):
            return None
        return max(0.0, (time.time() if now is None else now) - float(last["at"]))

    def beat(self, run_key: str, step: int, device: str) -> None:
        write_json_atomic(self.path, {"state": "running", "run_key": run_key, "step": step, "device": device,
                                      "at": time.time()})

    def close(self, state: str) -> None:
        try:
            last = json.loads(self.path.read_text())
        except (OSError, ValueError):
            last = {}
        write_json_atomic(self.path, {**last, "state": state, "at": time.time()})
