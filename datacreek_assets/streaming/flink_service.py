"""The hot-graph stream job as a local service: PyFlink's embedded cluster in its own environment
(`.venv-flink`, see requirements-flink.lock), started after Kafka and FalkorDB. Its health is the
Flink REST API: the service is ready when the job is RUNNING."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from datacreek_assets.local_services import ManagedProcess, ServiceError, _port_open, fetch_maven_jars
from datacreek_assets.streaming.events import STREAM_JOB_NAME

REPO_ROOT = Path(__file__).resolve().parents[2]
FLINK_VENV = REPO_ROOT / ".venv-flink"
FLINK_POM = REPO_ROOT / "services" / "flink" / "pom.xml"
KAFKA_CONNECTOR_VERSION = "5.0.0-2.2"
JOB_MODULE = "datacreek_assets.streaming.flink_job"
# the gateway JVM runs the embedded job and task managers: a small heap (it holds window state
# for a few tenants' 30 s of events), measured with the Python worker at ~0.9 GB resident
FLINK_JVM_OPTS = "-Xms128m -Xmx512m -XX:+UseG1GC"


class FlinkJobService(ManagedProcess):
    name = "flink"
    marker = JOB_MODULE

    @property
    def port(self) -> int:
        return self.settings.flink_rest_port

    @property
    def connector_jar(self) -> Path:
        return (self.settings.download_cache / f"flink-connectors-{KAFKA_CONNECTOR_VERSION}" / "lib"
                / f"flink-sql-connector-kafka-{KAFKA_CONNECTOR_VERSION}.jar")

    @property
    def python(self) -> Path:
        return FLINK_VENV / "bin" / "python"

    def prepare(self, progress: Callable[[str], None]) -> None:
        from datacreek_assets.streaming.events import EventLog, EventLogError

        if not self.python.exists():
            raise ServiceError("flink: its environment is missing; create it with `make venv` (.venv-flink)")
        if not self.connector_jar.exists():
            progress(f"flink: fetching the Kafka connector {KAFKA_CONNECTOR_VERSION} from Maven Central (first run only)")
            fetch_maven_jars("flink", FLINK_POM, self.connector_jar.parent,
                             {"kafka.connector.version": KAFKA_CONNECTOR_VERSION})
        try:  # the source fails while its topic is missing
            EventLog(f"127.0.0.1:{self.settings.kafka_port}").ensure_topics()
        except EventLogError as err:
            raise ServiceError(f"flink: the job reads Kafka, which is not up ({err})") from None

    def command(self) -> list[str]:
        return [str(self.python), "-m", JOB_MODULE, "--bootstrap", f"127.0.0.1:{self.settings.kafka_port}",
                "--falkordb-port", str(self.settings.falkordb_port), "--neo4j-uri", self.settings.neo4j_uri,
                "--state-dir", str(self.home / "state"),
                "--rest-port", str(self.port), "--connector-jar", str(self.connector_jar)]

    def environment(self) -> dict[str, str]:
        from datacreek_assets.streaming.event_auth import SIGNING_SECRET_ENV

        return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "JVM_ARGS": FLINK_JVM_OPTS,
                "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                SIGNING_SECRET_ENV: self.settings.event_signing_secret()}

    def job(self) -> dict | None:
        """The stream job's overview from the REST API (state, start time), or None."""
        try:
            with urllib.request.urlopen(f"http://{self.address}/jobs/overview", timeout=2) as reply:
                jobs = json.load(reply)["jobs"]
        except (OSError, ValueError, KeyError, urllib.error.URLError):
            return None
        ours = [j for j in jobs if j.get("name") == STREAM_JOB_NAME and j.get("state") not in ("CANCELED", "FINISHED")]
        return max(ours, key=lambda j: j.get("start-time", 0), default=None)

    def ready(self) -> bool:
        job = self.job()
        return job is not None and job.get("state") == "RUNNING"

    def down(self, progress: Callable[[str], None], timeout: float = 60.0) -> bool:
        """Stop the driver, its gateway JVM and its Python workers: the whole process group."""
        pid = self.our_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            progress(f"{self.name}: not running (nothing of ours to stop)")
            return False
        progress(f"{self.name}: stopping pid {pid} and its workers")
        kill_group(pid, timeout)
        self._wait_port_closed()
        self.pid_file.unlink(missing_ok=True)
        progress(f"{self.name}: stopped")
        return True

    def kill(self) -> None:
        """SIGKILL, as a crash would: no clean shutdown, no final checkpoint (tests, drills)."""
        pid = self.our_pid()
        if pid is not None:
            kill_group(pid, 0)
            self._wait_port_closed()
            self.pid_file.unlink(missing_ok=True)

    def _wait_port_closed(self, timeout: float = 20.0) -> None:
        """A killed JVM shows gone in /proc a moment before its sockets close."""
        deadline = time.monotonic() + timeout
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)


def kill_group(pid: int, timeout: float) -> None:
    """SIGTERM the process group ``pid`` leads (SIGKILL at once when ``timeout`` is 0, or after it)."""
    try:
        os.killpg(pid, signal.SIGKILL if timeout == 0 else signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _group_alive(pid):
        try:  # reap if it is our child (tests start it in-process)
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    if _group_alive(pid):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _group_alive(pid) and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    """Any live (not zombie) process left in the group (read from /proc: Linux only)."""
    return any(_in_group(int(p), pgid) for p in os.listdir("/proc") if p.isdigit())


def _in_group(pid: int, pgid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0] != "Z" and int(fields[2]) == pgid
