"""What the serving tests check on Ray Serve itself."""

from __future__ import annotations

import time


def adapters_dropped(control, tenants: list[str], versions: tuple[str, ...] | None = None, timeout: float = 60.0) -> bool:
    """The base pools' replicas drop the adapters of versions no longer live at their next check
    of the release store (every few seconds): True once none of these is loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [(t, v) for t, v in control.adapters_loaded() if t in tenants and (versions is None or v in versions)]:
            return True
        time.sleep(0.5)
    return False


def samples_reported(control, total: int, timeout: float = 30.0) -> bool:
    """The router replicas report their requests every 0.5 s: True once they have reported
    ``total`` of them in all (counted since they started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(r["samples"] for r in control.routers().values()) >= total:
            return True
        time.sleep(0.2)
    return False
