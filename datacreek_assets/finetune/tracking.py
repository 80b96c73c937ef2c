"""MLflow tracking, one experiment and one registered model per tenant.

Experiments are named ``datacreek/<tenant>`` with their artifacts under
``<artifact_root>/<tenant>``; registered models are ``datacreek-<tenant>``. A
run id from another tenant is refused, so a tenant's handle can never read or
write another tenant's runs.
"""

from __future__ import annotations

from pathlib import Path

from datacreek_assets.tenancy import validate_tenant_id


class ForeignRun(PermissionError):
    pass


class NoExperiment(LookupError):
    """The tenant has no experiment (it never trained, or it was removed), and none was to be made."""


def mlflow_client(tracking_uri: str):
    """An MlflowClient on ``tracking_uri``. MLflow creates a SQLite store's tables and migrates
    them the first time a process opens it, and two processes doing that at once collide
    ("table _alembic_tmp_tags already exists": seen when a backfill's run processes and the test
    cleaning up after it opened a new store together). Opening a SQLite store is therefore
    serialised between processes by a lock file next to it."""
    import fcntl

    from mlflow.tracking import MlflowClient
    from sqlalchemy.engine import make_url

    url = make_url(tracking_uri) if tracking_uri.startswith("sqlite:") else None
    if url is None or url.database in (None, "", ":memory:"):
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    db = Path(url.database)
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released as the file closes
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


class TenantTracking:
    def __init__(self, tracking_uri: str, artifact_root: str, tenant: str, create: bool = True):
        self.tenant = validate_tenant_id(tenant)
        self.client = mlflow_client(tracking_uri)
        self.experiment_name = f"datacreek/{self.tenant}"
        self.model_name = f"datacreek-{self.tenant}"
        found = self.client.get_experiment_by_name(self.experiment_name)
        if found is None and not create:
            raise NoExperiment(f"tenant {self.tenant!r} has no MLflow experiment")
        self.experiment_id = found.experiment_id if found else self._create_experiment(artifact_root)

    def _create_experiment(self, artifact_root: str) -> str:
        """Make the tenant's experiment, or take the one another process made since this one looked
        (seen in CI: a run started by automation and a tenant's removal both making it at once)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(
                self.experiment_name, artifact_location=f"{artifact_root.rstrip('/')}/{self.tenant}",
                tags={"datacreek/tenant": self.tenant})
        except MlflowException as err:
            found = self.client.get_experiment_by_name(self.experiment_name)
            if err.error_code != "RESOURCE_ALREADY_EXISTS" or found is None:
                raise
            return found.experiment_id

    def start_run(self, run_name: str, params: dict, tags: dict | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={"datacreek/tenant": self.tenant, **(tags or {})})
        for key, value in params.items():
            self.client.log_param(run.info.run_id, key, value)
        return run.info.run_id

    def reopen(self, run_id: str, tags: dict) -> None:
        """A training resumed after its process died continues its run: running again, under the
        Dagster run that resumed it (the run-status sensors may have ended it FAILED or KILLED
        meanwhile). A run that FINISHED (a training done before, materialized again) keeps its status
        and the Dagster run that made it."""
        if self.run(run_id).info.status == "FINISHED":
            return
        self.client.update_run(run_id, status="RUNNING")
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def end_runs_of(self, dagster_run_id: str, status: str) -> int:
        """End this tenant's MLflow runs that the Dagster run opened and left running; how many."""
        import uuid

        try:  # the filter is MLflow's query language: only a Dagster run id (a UUID) goes into it
            dagster_run_id = str(uuid.UUID(dagster_run_id))
        except ValueError:
            return 0
        found = self.client.search_runs([self.experiment_id], f"tags.dagster_run_id = '{dagster_run_id}' "
                                        "and attributes.status = 'RUNNING'")
        ended = 0
        for run in found:
            now = self.client.get_run(run.info.run_id)  # not resumed by another Dagster run meanwhile
            if now.info.status == "RUNNING" and now.data.tags.get("dagster_run_id") == dagster_run_id:
                self.client.set_terminated(run.info.run_id, status)
                ended += 1
        return ended

    def run(self, run_id: str):
        run = self.client.get_run(run_id)
        if run.info.experiment_id != self.experiment_id:
            raise ForeignRun(f"run {run_id} does not belong to tenant {self.tenant!r}")
        return run

    def log_metric(self, run_id: str, key: str, value: float, step: int = 0) -> None:
        self.run(run_id)
        self.client.log_metric(run_id, key, float(value), step=step)

    def log_history(self, run_id: str, key: str, points: list[tuple[int, float]]) -> None:
        """A metric's (step, value) history in batches (one SQL round trip per 1000 points)."""
        import time

        from mlflow.entities import Metric

        self.run(run_id)
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, int(step)) for step, value in points]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])

    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        self.run(run_id)
        self.client.log_artifact(run_id, str(path), folder)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.run(run_id)
        self.client.set_terminated(run_id, status)

    def register(self, run_id: str, artifact_folder: str, tags: dict | None = None) -> str:
        """A new version of the tenant's registered model from a folder of the run's artifacts."""
        from mlflow.exceptions import MlflowException

        run = self.run(run_id)
        existing = self.client.search_model_versions(f"name='{self.model_name}' and run_id='{run_id}'")
        if existing:  # re-evaluating the same training does not mint a new version
            return existing[0].version
        try:
            self.client.create_registered_model(self.model_name, tags={"datacreek/tenant": self.tenant})
        except MlflowException:
            pass  # already registered
        version = self.client.create_model_version(self.model_name, f"{run.info.artifact_uri}/{artifact_folder}",
                                                   run_id=run_id, tags=tags or {})
        return version.version

    def delete_run(self, run_id: str) -> bool:
        """Garbage-collect one training: its model versions, its artifacts, then the run itself.
        False when MLflow no longer has the run (deleted before): nothing left to do."""
        from mlflow.exceptions import MlflowException
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            run = self.run(run_id)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        for version in self.client.search_model_versions(f"name='{self.model_name}' and run_id='{run_id}'"):
            self.client.delete_model_version(self.model_name, version.version)
        get_artifact_repository(run.info.artifact_uri).delete_artifacts()
        if run.info.lifecycle_stage != "deleted":
            self.client.delete_run(run_id)
        return True

    def remove(self) -> None:
        """Delete the tenant's registered model and experiment. The experiment is renamed first:
        MLflow keeps deleted names reserved, and the id may be onboarded again."""
        import time

        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_registered_model(self.model_name)
        except MlflowException:
            pass  # never registered
        self.client.rename_experiment(self.experiment_id, f"{self.experiment_name}@removed-{int(time.time())}")
        self.client.delete_experiment(self.experiment_id)

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        self.run(run_id)
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]
