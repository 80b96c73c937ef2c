"""A new SQLite MLflow store opened by several processes at once: each process gets its tenant's
experiment, and no process meets another's half-done table migration."""

from __future__ import annotations

import subprocess
import sys

OPEN = """
import sys, time
from datacreek_assets.finetune.tracking import TenantTracking
start = float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))  # all processes open the store together
tracking = TenantTracking(sys.argv[1], sys.argv[2], sys.argv[4])
print(tracking.experiment_name)
"""


def test_processes_opening_a_new_sqlite_store_together_all_succeed(tmp_path):
    import time

    uri, artifacts = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}", str(tmp_path / "artifacts")
    start = time.time() + 8  # after every interpreter has imported MLflow
    tenants = ["acme", "globex", "initech", "umbrella"]
    processes = [subprocess.Popen([sys.executable, "-c", OPEN, uri, artifacts, str(start), tenant],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tenant in tenants]
    results = [(process.wait(timeout=300), *process.communicate()) for process in processes]
    for code, out, err in results:
        assert code == 0, err[-2000:]
    assert [out.strip() for _, out, _ in results] == [f"datacreek/{t}" for t in tenants]
