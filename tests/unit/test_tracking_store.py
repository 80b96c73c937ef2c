"""A new SQLite MLflow store opened by several processes at once: each process gets its tenant's
experiment, and no process meets another's half-done table migration."""

from __future__ import annotations

import subprocess
import sys
import time

OPEN = """
import sys, time
from pathlib import Path
import mlflow.store.tracking.sqlalchemy_store, mlflow.tracking  # imported before the barrier
from datacreek_assets.finetune.tracking import TenantTracking
uri, artifacts, barrier, tenant = sys.argv[1:]
(Path(barrier) / tenant).touch()  # ready
while not (Path(barrier) / "go").exists():
    time.sleep(0.01)
print(TenantTracking(uri, artifacts, tenant).experiment_name)
"""


def test_processes_opening_a_new_sqlite_store_together_all_succeed(tmp_path):
    uri, artifacts = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}", str(tmp_path / "artifacts")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    tenants = ["acme", "globex", "initech", "umbrella"]
    processes = [subprocess.Popen([sys.executable, "-c", OPEN, uri, artifacts, str(barrier), tenant],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tenant in tenants]
    try:
        for _ in range(12000):  # every process has imported MLflow (at most 120 s)
            if all((barrier / t).exists() for t in tenants) or any(p.poll() is not None for p in processes):
                break
            time.sleep(0.01)
        (barrier / "go").touch()  # all open the new store together
        results = [(process.communicate(timeout=300), process.returncode) for process in processes]
    finally:
        for process in processes:
            process.kill()
            process.wait()
    for (_, err), code in results:
        assert code == 0, err[-2000:]
    assert [out.strip() for (out, _), _ in results] == [f"datacreek/{t}" for t in tenants]
