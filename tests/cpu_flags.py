"""The CPU's flags as Linux reports them: what a test compares torch's own CPU checks with."""

from pathlib import Path

import pytest


def cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("reads the CPU's flags from Linux's /proc/cpuinfo")
    return set(next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                     if line.startswith("flags")), []))
