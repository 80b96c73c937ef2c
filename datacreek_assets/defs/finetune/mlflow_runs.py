"""MLflow runs end when their Dagster run does, also when no step code ran to end them.

The run-end hook (dagster-mlflow's ``end_mlflow_on_run_finished``) ends a run when a step fails in
Python. A step killed outright (an OOM kill, a node lost without its grace period) or a run an
operator marks canceled runs no hook: the sensors close what such a run left RUNNING.
"""

import dagster as dg

from resources.stores import MlflowTrackingResource


def _end_mlflow_on_run_finished(context, event_list):
    from dagster_mlflow import end_mlflow_on_run_finished

    return end_mlflow_on_run_finished.hook_fn(context, event_list)


# dagster-mlflow's run-end hook, imported when a step ends rather than when the code location loads:
# its module imports all of MLflow (~2 s), and every run and step process loads the code location.
END_MLFLOW_RUN = dg.HookDefinition(name="end_mlflow_on_run_finished", hook_fn=_end_mlflow_on_run_finished,
                                   required_resource_keys={"mlflow"})


def close_mlflow_runs(dagster_run: dg.DagsterRun, mlflow: MlflowTrackingResource, status: str) -> dg.SkipReason | None:
    """End the MLflow runs a finished Dagster run left RUNNING in its tenant's experiment."""
    partition = dagster_run.tags.get("dagster/partition", "")
    if not mlflow.end_runs_of(partition, dagster_run.run_id, status):
        return dg.SkipReason(f"run {dagster_run.run_id} ({partition or 'no partition'}) left no MLflow run running")
    return None


@dg.run_failure_sensor(name="mlflow_runs_of_failed_runs", default_status=dg.DefaultSensorStatus.RUNNING,
                       description="A failed Dagster run's MLflow runs that are still RUNNING end FAILED.")
def mlflow_runs_of_failed_runs(context: dg.RunFailureSensorContext, mlflow: MlflowTrackingResource):
    return close_mlflow_runs(context.dagster_run, mlflow, "FAILED")


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.CANCELED, name="mlflow_runs_of_canceled_runs",
                      default_status=dg.DefaultSensorStatus.RUNNING,
                      description="A canceled Dagster run's MLflow runs that are still RUNNING end KILLED.")
def mlflow_runs_of_canceled_runs(context: dg.RunStatusSensorContext, mlflow: MlflowTrackingResource):
    return close_mlflow_runs(context.dagster_run, mlflow, "KILLED")
