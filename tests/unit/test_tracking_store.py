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


def test_an_experiment_made_by_another_process_meanwhile_is_taken_not_refused(tmp_path, monkeypatch):
    """The window between looking the experiment up and making it (CI: an automation run and a
    tenant's removal both made one): the second maker takes the first's experiment."""
    from mlflow.tracking import MlflowClient

    from datacreek_assets.finetune.tracking import TenantTracking, mlflow_client

    uri, artifacts = f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts")
    other = mlflow_client(uri)
    looked_up = MlflowClient.get_experiment_by_name
    made = []

    def look_up_then_lose_the_race(self, name):
        found = looked_up(self, name)
        if not made:  # the other process makes it right after this one looked
            made.append(other.create_experiment(name))
        return found

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", look_up_then_lose_the_race)
    tracking = TenantTracking(uri, artifacts, "acme")
    assert made and tracking.experiment_id == made[0]
