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
