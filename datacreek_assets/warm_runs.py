"""Runs forked from a warm process: the local profile's run launcher.

Dagster's default launcher has the code server spawn a fresh interpreter per run. Before its first
step that interpreter imports Dagster and the code location, builds the definitions, opens the
instance and imports what the steps use: 10 s of CPU per run with four runs sharing two cores
(README, per-tenant backfills), paid again by every tenant of a backfill. `WarmProcessRunLauncher`
keeps one process per code location that has done that once, and forks it for each run. The run
then starts with everything imported, builds the definitions again (warm: tens of milliseconds)
and executes the body of `dagster api execute_run`, the entry point of Dagster's Kubernetes and
Docker launchers.

- One warm process per code location. A launch first fingerprints the Python files (path, size,
  mtime) under the code location's folders; when any changed since the warm process loaded them,
  it is replaced. Installed packages (the virtual environment) are not watched: restart
  `dagster dev` after installing.
- The run process tags its run with its pid and host, so it can be terminated from any process
  on the host (the UI, the daemon, the credit sensor in the code server): SIGINT, which Dagster's
  run worker turns into a cancellation. The run-monitoring daemon asks `check_run_worker_health`,
  so a run process that died without a word (OOM-killed, SIGKILL) fails its run instead of holding
  its tenant's run slot.
- Each run is still a process of its own: a crash, a leak or a stuck step ends with its run.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

from dagster import Array, Field, StringSource
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._serdes import ConfigurableClass, ConfigurableClassData

from datacreek_assets.signals import let_children_take_default_signals

PID_TAG = "datacreek/run-pid"
START_TAG = "datacreek/run-process-start"
HOST_TAG = "datacreek/run-host"
TAG_WAIT_S = 10.0  # how long terminate waits for a just-forked run process to tag its run
READY_TIMEOUT_S = 300.0  # a cold first load on a busy 2-core machine takes well under a minute
_SKIPPED_DIRS = {"__pycache__", "node_modules", "test-artifacts"}


def source_fingerprint(*roots: Path) -> str:
    """A digest of (path, size, mtime) of every Python file under ``roots``; hidden folders
    (virtual environments, state) are skipped. An edit, a copy with an old mtime, an addition or a
    removal changes it."""
    entries = []
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _SKIPPED_DIRS]
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    stat = os.stat(path)
                    entries.append(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}")
    return hashlib.blake2b("\n".join(sorted(entries)).encode(), digest_size=16).hexdigest()


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (so field N of proc(5) is item N - 3),
    or None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (field 22), or None when there is no
    such process. With the pid it names one process for good."""
    fields = proc_stat(pid)
    return fields[19] if fields else None


def code_roots(repository_origin) -> list[Path]:
    """Where a code location's own Python lives: its working directory (its local imports) and
    the folder of its python file, when that is elsewhere."""
    pointer = repository_origin.code_pointer
    roots = [Path(d).resolve() for d in [getattr(pointer, "working_directory", None)] if d]
    python_file = getattr(pointer, "python_file", None)
    if python_file:
        folder = Path(python_file).resolve().parent
        if not any(folder.is_relative_to(root) for root in roots):
            roots.append(folder)
    return roots or [Path.cwd()]


class WarmProcess:
    """One warm server (``python -m datacreek_assets.warm_runs``) and the pipes to it."""

    def __init__(self, repository_origin, instance_ref, preload: list[str]):
        from dagster._serdes import serialize_value

        self.roots = code_roots(repository_origin)
        self.fingerprint = source_fingerprint(*self.roots)
        self.process = subprocess.Popen(
            [repository_origin.executable_path, "-m", "datacreek_assets.warm_runs",
             serialize_value(repository_origin), *preload],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=self.roots[0], text=True, bufsize=1)
        # the instance's config on stdin, not in argv (which `ps` shows to everyone)
        self.process.stdin.write(serialize_value(instance_ref) + "\n")
        self.process.stdin.flush()
        self._ready = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def current(self) -> bool:
        return self.process.poll() is None and source_fingerprint(*self.roots) == self.fingerprint

    def _reply(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            state = (f"exited with code {self.process.poll()}" if self.process.poll() is not None
                     else f"did not answer within {timeout:.0f} s")
            raise RuntimeError(f"the warm run process {self.pid} {state}; its output is in the daemon's log")
        return json.loads(line)

    def fork_run(self, run_id: str, execute_run_args: str) -> int:
        """Starts run ``run_id`` (its serialized `ExecuteRunArgs`, one line of JSON); returns the
        run process's pid. After an error the server is out of step: close it."""
        if not self._ready:
            self._reply(READY_TIMEOUT_S)
            self._ready = True
        self.process.stdin.write(execute_run_args + "\n")
        self.process.stdin.flush()
        reply = self._reply(60.0)
        if reply.get("run_id") != run_id:
            raise RuntimeError(f"the warm run process {self.pid} answered for run {reply.get('run_id')}, not {run_id}")
        return int(reply["pid"])

    def close(self) -> None:
        """Stops the server (end of its input); runs forked from it go on, as processes of their own."""
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                pipe.close()
            except OSError:  # the pipe of a server that died
                pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class WarmProcessRunLauncher(RunLauncher, ConfigurableClass):
    """Forks each run from a process that has imported the code location (module docstring).

    ``preload_modules``: modules the warm process imports as well, e.g. ones asset bodies import
    when they run (each run would otherwise import them again). Import only: a module that starts
    threads or opens connections when imported does not belong here, since a fork copies neither."""

    def __init__(self, preload_modules: list[str] | None = None, inst_data: ConfigurableClassData | None = None):
        self._inst_data = inst_data
        self._preload = list(preload_modules or [])
        self._servers: dict[str, WarmProcess] = {}
        self._lock = threading.Lock()
        super().__init__()

    @property
    def inst_data(self):
        return self._inst_data

    @classmethod
    def config_type(cls):
        return {"preload_modules": Field(Array(StringSource), is_required=False, default_value=[])}

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, **config_value)

    def _server_for(self, repository_origin) -> WarmProcess:
        from dagster._serdes import serialize_value

        key = serialize_value(repository_origin)
        server = self._servers.get(key)
        if server is not None and not server.current():
            server.close()
            server = None
        if server is None:
            server = self._servers[key] = WarmProcess(repository_origin, self._instance.get_ref(), self._preload)
        return server

    def launch_run(self, context: LaunchRunContext) -> None:
        from dagster._grpc.types import ExecuteRunArgs
        from dagster._serdes import serialize_value

        run = context.dagster_run
        if run.job_code_origin is None:
            raise ValueError(f"run {run.run_id} has no code origin: the warm launcher cannot load its job")
        args = ExecuteRunArgs(job_origin=run.job_code_origin, run_id=run.run_id, instance_ref=self._instance.get_ref(),
                              set_exit_code_on_failure=False)
        # before the fork, so no write of the run process can race it: marks the run as this host's
        self._instance.add_run_tags(run.run_id, {HOST_TAG: socket.gethostname()})
        with self._lock:
            server = self._server_for(run.job_code_origin.repository_origin)
            try:
                pid = server.fork_run(run.run_id, serialize_value(args))
            except Exception:  # out of step: the next launch starts a new one
                self._servers = {k: v for k, v in self._servers.items() if v is not server}
                server.close()
                raise
        self._instance.report_engine_event(f"Forked run process {pid} from warm process {server.pid}.", run,
                                           cls=self.__class__)

    @staticmethod
    def _ours(run) -> bool:
        """Launched by this launcher on this host (runs executed in-process by the CLI, or by
        another launcher, carry no host tag)."""
        return run.tags.get(HOST_TAG) == socket.gethostname()

    def _live_run_process(self, run) -> int | None:
        """The pid of ``run``'s process (callers check `_ours`) while it lives, else None. The run
        process tags its pid and its start time (in clock ticks since boot); a pid the kernel has
        since given to another process has another start time."""
        pid, start = run.tags.get(PID_TAG), run.tags.get(START_TAG)
        if pid is None or start is None:
            return None
        return int(pid) if process_start(int(pid)) == start else None

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        # Dagster's run monitor fails a run on anything but RUNNING or SUCCESS: only a run process
        # known to this launcher and gone now is a failure. Runs not yet tagged are STARTING, which
        # the monitor's start timeout covers.
        if not self._ours(run) or PID_TAG not in run.tags:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "not a run process of this host's warm launcher")
        if self._live_run_process(run) is not None:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run process {run.tags[PID_TAG]} is gone")

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished or not self._ours(run):
            return False  # an in-process run (the CLI's) has no process of its own to stop
        self._instance.report_run_canceling(run)
        # A run process tags itself just before it reads its run: wait for the tag, then interrupt
        # it. A run process that never tags (gone before it could) sees the run cancelled if it
        # ever reads it.
        deadline = time.monotonic() + TAG_WAIT_S
        while PID_TAG not in run.tags and time.monotonic() < deadline and not run.is_finished:
            time.sleep(0.1)
            run = self._instance.get_run_by_id(run_id)
        if run.is_finished:
            return False
        pid = self._live_run_process(run)
        try:
            if pid is not None:
                os.kill(pid, signal.SIGINT)
                return True
        except ProcessLookupError:
            pass
        self._instance.report_run_canceled(run, message="Its run process was not running.")
        return True

    def dispose(self) -> None:
        with self._lock:
            for server in self._servers.values():
                server.close()
            self._servers.clear()


def _run_forked(args, loaded: bool) -> int:
    """The forked child: tags its run with its pid, then runs `dagster api execute_run`'s body on
    the warm process's imports."""
    from dagster._cli.api import _execute_run_command_body
    from dagster._cli.utils import get_instance_for_cli
    from dagster._utils.interrupts import capture_interrupts

    with capture_interrupts(), get_instance_for_cli(instance_ref=args.instance_ref) as instance:
        instance.add_run_tags(args.run_id, {PID_TAG: str(os.getpid()), START_TAG: process_start(os.getpid())})
        if not loaded:
            # a partly imported code location must not run: a fresh interpreter (same pid) loads it
            # again and reports the error on the run. Like Dagster's own launchers it takes its
            # arguments, the instance's config included, on argv.
            from dagster._serdes import serialize_value

            os.execv(sys.executable, [sys.executable, "-m", "dagster", "api", "execute_run", serialize_value(args)])
        return _execute_run_command_body(args.run_id, instance, lambda event: None, set_exit_code_on_failure=False)


def _load(repository_origin: str, instance_ref: str, preload: list[str]) -> bool:
    """Imports ``preload``, opens and closes the instance once (its storage's imports), and loads
    the code location; False when the code location failed to load."""
    import importlib
    import traceback

    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef
    from dagster._core.origin import RepositoryPythonOrigin
    from dagster._serdes import deserialize_value
    from dagster._utils.hosted_user_process import recon_repository_from_origin

    try:
        with DagsterInstance.from_ref(deserialize_value(instance_ref, InstanceRef)) as instance:
            instance.get_runs(limit=1)  # closed again: a fork must not share its connections
    except Exception:  # each run opens it again and fails on its own
        traceback.print_exc()
    for module in ["dagster._cli.api", *preload]:  # the first: what each run process calls
        try:
            importlib.import_module(module)
        except Exception:  # a run that needs it reports the error itself
            traceback.print_exc()
    try:
        # a full load (imports, and what building the definitions imports lazily); each run then
        # builds the definitions again from the module this leaves in sys.modules
        recon_repository_from_origin(deserialize_value(repository_origin, RepositoryPythonOrigin)).get_definition()
        return True
    except Exception:
        traceback.print_exc()
        return False


def _exit(code: int) -> None:
    """Ends a run process as interpreter shutdown does (threading's exit hooks, non-daemon threads
    joined, atexit handlers), but without tearing down every module: with Dagster, the code
    location and the preloaded libraries in memory that costs about 1 s of CPU per run (measured),
    and a forked process would also copy every page whose reference counts it touches."""
    threading._shutdown()  # what Py_Finalize calls first (CPython 3.12)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve(repository_origin: str, preload: list[str]) -> None:
    """The warm server: load once, then start a run process per request line on stdin."""
    import traceback

    from dagster._grpc.types import ExecuteRunArgs
    from dagster._serdes import deserialize_value

    let_children_take_default_signals()  # the runs' compute-log tailers must stop on SIGTERM
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the runs' output and the loading's go where the daemon's stderr goes
    started = time.perf_counter()
    loaded = _load(repository_origin, sys.stdin.readline(), preload)
    print(f"warm run process {os.getpid()}: {'loaded' if loaded else 'failed to load'} in "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished runs
    # Python warns on every fork of a process with threads. The only ones here are native: OpenBLAS's
    # pool (numpy) and jemalloc's background thread (pyarrow, which the Neo4j driver imports).
    # Both libraries register fork handlers, and no Python thread runs at a fork.
    warnings.filterwarnings("ignore", r"This process .* is multi-threaded", DeprecationWarning)
    replies.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        args = deserialize_value(line, ExecuteRunArgs)
        sys.stdout.flush()  # or the child would write what is buffered again
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # a run waits for its own subprocesses
                replies.close()
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                code = _run_forked(args, loaded)
            except BaseException:
                traceback.print_exc()
                code = 1
            _exit(code)
        replies.write(json.dumps({"run_id": args.run_id, "pid": pid}) + "\n")


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2:])
