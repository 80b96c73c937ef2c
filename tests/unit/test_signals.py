"""An ignored SIGINT or SIGTERM is kept ignored here but not handed down to child processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

CHILD = """
import json, signal, subprocess, threading
from datacreek_assets.signals import let_children_take_default_signals

def ignored_by(pid):  # the signals a process ignores, from its SigIgn mask
    mask = int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("SigIgn")).split()[1], 16)
    return sorted(s.name for s in (signal.SIGINT, signal.SIGTERM) if mask & (1 << (s - 1)))

def grandchild():
    process = subprocess.Popen(["sleep", "30"])
    try:
        return ignored_by(process.pid)
    finally:
        process.kill()
        process.wait()

report = {"before": grandchild()}
off_main = []
thread = threading.Thread(target=lambda: off_main.append(let_children_take_default_signals()))
thread.start()
thread.join()
report["off the main thread"] = off_main[0]
report["changed"] = let_children_take_default_signals()
report["after"] = grandchild()
signal.raise_signal(signal.SIGINT)  # still ignored here
signal.raise_signal(signal.SIGTERM)
report["again"] = let_children_take_default_signals()
print(json.dumps(report))
"""


def test_ignored_signals_stay_ignored_here_and_children_get_the_defaults():
    def ignore_both():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60,
                           preexec_fn=ignore_both)
    assert child.returncode == 0, child.stderr[-2000:]
    assert json.loads(child.stdout.strip().splitlines()[-1]) == {
        "before": ["SIGINT", "SIGTERM"], "off the main thread": False, "changed": True, "after": [], "again": False}
    assert "ignored and not on the main thread" in child.stderr
