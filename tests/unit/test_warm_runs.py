"""The warm run launcher, with a real Dagster instance (SQLite) and real forked run processes.

A throwaway code location records, from inside each run, its pid, its parent's pid and a version
constant of its own source; the tests read those records back.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.launcher import WorkerStatus

from datacreek_assets.settings import ensure_dagster_home
from datacreek_assets.tenancy import TENANT_TAG
from datacreek_assets.tenant_lifecycle import stop_tenant_runs
from datacreek_assets.warm_runs import PID_TAG, WarmProcessRunLauncher, proc_stat, source_fingerprint

CODE = '''
import atexit, os, time
import dagster as dg

VERSION = {version}

@dg.op
def record(context):
    path = os.path.join(os.environ["WARM_RUNS_OUT"], context.run_id)
    with open(path, "w") as f:
        f.write(f"{{os.getpid()}} {{os.getppid()}} {{VERSION}}")
    atexit.register(lambda: open(path + ".atexit", "w").close())  # what a library might leave to exit

@dg.op
def wait_long():
    time.sleep(300)

@dg.job(executor_def=dg.in_process_executor)
def record_job():
    record()

@dg.job(executor_def=dg.in_process_executor)
def wait_job():
    wait_long()

defs = dg.Definitions(jobs=[record_job, wait_job])
'''


def write_code(path: Path, version: int, broken: bool = False) -> None:
    path.write_text(CODE.format(version=version) + ("\nraise RuntimeError('broken on purpose')\n" if broken else ""))
    stamp = time.time_ns() + version * 1_000_000_000  # a new mtime even within the file system's resolution
    os.utime(path, ns=(stamp, stamp))


@pytest.fixture
def warm(tmp_path, monkeypatch):
    code, out, home = tmp_path / "code", tmp_path / "out", tmp_path / "home"
    for folder in (code, out, home):
        folder.mkdir()
    write_code(code / "jobs.py", 1)
    monkeypatch.setenv("WARM_RUNS_OUT", str(out))
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nrun_launcher:\n"
                                       "  module: datacreek_assets.warm_runs\n  class: WarmProcessRunLauncher\n")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        try:
            yield instance, code / "jobs.py", out
        finally:
            for run in instance.get_runs():
                if not run.is_finished:
                    instance.run_launcher.terminate(run.run_id)
            instance.run_launcher.dispose()


def create(instance, code_file: Path, job: str, tags: dict | None = None) -> str:
    # its own working directory, so that only this code location's files decide when to reload
    recon = ReconstructableRepository.for_file(str(code_file), "defs", str(code_file.parent)).get_reconstructable_job(job)
    return instance.create_run_for_job(job_def=recon.get_definition(), job_code_origin=recon.get_python_origin(),
                                       tags=tags).run_id


def launch(instance, code_file: Path, job: str, run_id: str | None = None, tags: dict | None = None) -> str:
    run_id = run_id or create(instance, code_file, job, tags)
    instance.launch_run(run_id, None)  # the warm launcher needs no workspace
    return run_id


def finished(instance, run_id: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run.is_finished:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish in {timeout} s: {run.status}")


def recorded(out: Path, run_id: str) -> tuple[int, int, int]:
    pid, parent, version = (out / run_id).read_text().split()
    return int(pid), int(parent), int(version)


def test_runs_fork_from_one_warm_process_and_a_code_edit_replaces_it(warm):
    instance, code_file, out = warm
    assert isinstance(instance.run_launcher, WarmProcessRunLauncher)
    first, second = launch(instance, code_file, "record_job"), launch(instance, code_file, "record_job")
    records = {}
    for run_id in (first, second):
        run = finished(instance, run_id)
        assert run.status == dg.DagsterRunStatus.SUCCESS
        records[run_id] = recorded(out, run_id)
        assert records[run_id][0] == int(run.tags[PID_TAG])  # the tag names the run's own process
    (pid_a, parent_a, version_a), (pid_b, parent_b, version_b) = records[first], records[second]
    assert pid_a != pid_b
    assert parent_a == parent_b  # both forked from the same warm process
    assert version_a == version_b == 1
    deadline = time.monotonic() + 30  # written as the run process exits, after the run's success
    while not (out / f"{first}.atexit").exists():
        assert time.monotonic() < deadline, "the run process did not run its atexit handlers"
        time.sleep(0.1)

    write_code(code_file, 2)
    third = launch(instance, code_file, "record_job")
    assert finished(instance, third).status == dg.DagsterRunStatus.SUCCESS
    _, parent_c, version_c = recorded(out, third)
    assert version_c == 2  # the edited code ran, not the warm process's copy
    assert parent_c != parent_a


def started(instance, run_id: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while (run := instance.get_run_by_id(run_id)).status != dg.DagsterRunStatus.STARTED:
        assert time.monotonic() < deadline, f"run {run_id} never started: {run.status}"
        time.sleep(0.2)
    return run


def test_terminate_cancels_a_running_run_and_refuses_a_finished_one(warm):
    instance, code_file, out = warm
    run_id = launch(instance, code_file, "wait_job")
    started(instance, run_id)
    assert instance.run_launcher.terminate(run_id)
    assert finished(instance, run_id, 60).status == dg.DagsterRunStatus.CANCELED
    assert not instance.run_launcher.terminate(run_id)
    with pytest.raises(ProcessLookupError):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the cancelled run's process is gone, not left behind
            os.kill(int(instance.get_run_by_id(run_id).tags[PID_TAG]), 0)
            time.sleep(0.2)


def test_a_run_whose_code_no_longer_loads_fails_and_the_next_good_one_runs(warm):
    instance, code_file, out = warm
    broken = create(instance, code_file, "record_job")
    write_code(code_file, 3, broken=True)  # broken between the run's creation and its launch
    launch(instance, code_file, "record_job", broken)
    run = finished(instance, broken)
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert not (out / broken).exists()
    errors = [entry.dagster_event.engine_event_data.error for entry in instance.all_logs(broken)
              if entry.dagster_event and entry.dagster_event.is_engine_event]
    assert any(error and "broken on purpose" in error.message for error in errors)  # the run says why

    write_code(code_file, 4)
    fixed = launch(instance, code_file, "record_job")
    assert finished(instance, fixed).status == dg.DagsterRunStatus.SUCCESS
    assert recorded(out, fixed)[2] == 4


def test_the_local_dagster_home_forks_runs_from_a_warm_process(tmp_path):
    with dg.DagsterInstance.from_config(str(ensure_dagster_home(tmp_path))) as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher, WarmProcessRunLauncher)
        assert "neo4j" in launcher._preload
        assert instance.run_monitoring_enabled  # so a dead run process fails its run


def test_removing_a_tenant_stops_its_running_run_and_no_other_tenant_s(warm):
    instance, code_file, out = warm
    mine, other = (launch(instance, code_file, "wait_job", tags={"dagster/partition": t, TENANT_TAG: t})
                   for t in ("acme", "globex"))
    for run_id in (mine, other):
        started(instance, run_id)
    assert stop_tenant_runs("acme", instance, timeout_s=60) == [mine]  # returns once it has ended
    assert instance.get_run_by_id(mine).status == dg.DagsterRunStatus.CANCELED
    assert instance.get_run_by_id(other).status == dg.DagsterRunStatus.STARTED


def test_a_run_process_that_dies_without_a_word_fails_its_health_check_and_cancels_at_once(warm):
    instance, code_file, out = warm
    launcher = instance.run_launcher
    run_id = launch(instance, code_file, "wait_job")
    run = started(instance, run_id)
    assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    os.kill(int(run.tags[PID_TAG]), signal.SIGKILL)  # as the OOM killer would: no event, no status
    deadline = time.monotonic() + 30
    while launcher.check_run_worker_health(instance.get_run_by_id(run_id)).status != WorkerStatus.FAILED:
        assert time.monotonic() < deadline, "a dead run process still counts as running"
        time.sleep(0.2)
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED  # what monitoring then fails
    assert launcher.terminate(run_id)  # nothing to signal: cancelled at once, not left CANCELING
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.CANCELED


def test_a_pid_the_kernel_gave_to_another_process_is_not_the_run_s(warm):
    instance, code_file, out = warm
    run_id = launch(instance, code_file, "record_job")
    assert finished(instance, run_id).status == dg.DagsterRunStatus.SUCCESS
    instance.add_run_tags(run_id, {PID_TAG: str(os.getpid())})  # a live process, but not a run process
    assert instance.run_launcher._live_run_process(instance.get_run_by_id(run_id)) is None


def test_runs_it_did_not_launch_are_neither_failed_nor_cancelled_by_it(warm):
    instance, code_file, out = warm
    run_id = create(instance, code_file, "wait_job")  # as the CLI's in-process runs: no host tag
    run = instance.get_run_by_id(run_id)
    assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    assert not instance.run_launcher.terminate(run_id)
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.NOT_STARTED


def test_a_warm_process_that_died_is_replaced_at_the_next_launch(warm):
    instance, code_file, out = warm
    first = launch(instance, code_file, "record_job")
    assert finished(instance, first).status == dg.DagsterRunStatus.SUCCESS
    _, warm_pid, _ = recorded(out, first)
    os.kill(warm_pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while proc_stat(warm_pid)[0] != "Z":  # field 3: the state
        assert time.monotonic() < deadline, "the killed warm process is still running"
        time.sleep(0.05)  # dead, waiting for its parent (this process's launcher) to notice
    second = launch(instance, code_file, "record_job")
    assert finished(instance, second).status == dg.DagsterRunStatus.SUCCESS
    assert recorded(out, second)[1] != warm_pid


def test_the_fingerprint_sees_edits_copies_additions_and_removals_but_not_hidden_folders(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / ".venv").mkdir()
    before = source_fingerprint(tmp_path)
    (tmp_path / ".venv" / "lib.py").write_text("y = 1\n")
    assert source_fingerprint(tmp_path) == before
    (tmp_path / "b.py").write_text("y = 1\n")
    added = source_fingerprint(tmp_path)
    assert added != before
    old = os.stat(tmp_path / "a.py").st_mtime_ns - 10_000_000_000
    (tmp_path / "a.py").write_text("x = 2\n")  # same size, and an older mtime, as `cp -p` leaves it
    os.utime(tmp_path / "a.py", ns=(old, old))
    copied = source_fingerprint(tmp_path)
    assert copied != added
    (tmp_path / "b.py").unlink()
    assert source_fingerprint(tmp_path) not in (copied, added)
