"""Apache Kafka for the local profile: one JVM as broker and controller (KRaft), from its Maven
Central jars like Neo4j. The storage directory is formatted once, with a cluster id kept beside it."""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Callable

from datacreek_assets.local_services import ManagedProcess, ServiceError, fetch_maven_jars

KAFKA_VERSION = "4.1.1"
KAFKA_POM = Path(__file__).resolve().parents[2] / "services" / "kafka" / "pom.xml"
KAFKA_ENTRY_POINT = "kafka.Kafka"
# a small heap: the event log holds little, and Neo4j, FalkorDB, Ray and the tests share 24 GiB
KAFKA_JVM_FLAGS = ["-Xms128m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"]
LOG_CONFIG = """Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
"""


class KafkaService(ManagedProcess):
    name = "kafka"
    marker = KAFKA_ENTRY_POINT

    @property
    def port(self) -> int:
        return self.settings.kafka_port

    @property
    def controller_port(self) -> int:
        return self.settings.kafka_port + 1

    @property
    def tenant_port(self) -> int:
        return self.settings.kafka_tenant_port

    @property
    def lib_dir(self) -> Path:
        return self.settings.download_cache / f"kafka-{KAFKA_VERSION}" / "lib"

    def properties(self) -> str:
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
            # PLAINTEXT: the platform's listener (the services, the stream job; in a cluster only the
            # platform's namespace reaches it). TENANT: tenants' pods, each with its SCRAM user, whose
            # ACLs allow writing the events topic and nothing else (``tenant_credentials``).
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port},"
            f"TENANT://127.0.0.1:{self.tenant_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port},TENANT://127.0.0.1:{self.tenant_port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,TENANT:SASL_PLAINTEXT",
            "listener.name.tenant.sasl.enabled.mechanisms=SCRAM-SHA-512",
            "listener.name.tenant.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found=false",
            "super.users=User:ANONYMOUS",  # the platform's listener (and the controller's) authenticate no one
            f"log.dirs={self.home / 'data'}",
            "num.partitions=4",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",  # topics are made by ensure_topics, with their settings
            "",
        ])

    def prepare(self, progress: Callable[[str], None]) -> None:
        if shutil.which("java") is None:
            raise ServiceError("kafka: Java 17 is required; install it with `apt-get install -y openjdk-17-jre-headless`")
        if not (self.lib_dir / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
            self._fetch_jars(progress)
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "server.properties").write_text(self.properties())
        (self.home / "log4j2.yaml").write_text(LOG_CONFIG)
        if not (self.home / "data" / "meta.properties").exists():
            self._format(progress)

    def _java(self, main: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["java", "-Xmx256m", f"-Dlog4j2.configurationFile={self.home / 'log4j2.yaml'}",
                               "-cp", f"{self.lib_dir}/*", main, *args], capture_output=True, text=True, timeout=120)

    def _format(self, progress: Callable[[str], None]) -> None:
        progress("kafka: formatting its storage (first run only)")
        shutil.rmtree(self.home / "data", ignore_errors=True)
        cluster_id = "-"
        while cluster_id.startswith("-"):  # Kafka's id format; a leading dash would read as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        result = self._java("kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id,
                            "-c", str(self.home / "server.properties"))
        if result.returncode != 0:
            raise ServiceError(f"kafka: formatting the storage failed:\n{result.stdout[-1500:]}{result.stderr[-1500:]}")

    def _fetch_jars(self, progress: Callable[[str], None]) -> None:
        progress(f"kafka: fetching Apache Kafka {KAFKA_VERSION} from Maven Central (first run only)")
        fetch_maven_jars("kafka", KAFKA_POM, self.lib_dir, {"kafka.version": KAFKA_VERSION})

    def command(self) -> list[str]:
        return ["java", *KAFKA_JVM_FLAGS, f"-Ddatacreek.port={self.port}",
                f"-Dlog4j2.configurationFile={self.home / 'log4j2.yaml'}", "-cp", f"{self.lib_dir}/*",
                KAFKA_ENTRY_POINT, str(self.home / "server.properties")]

    def ready(self) -> bool:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        try:
            AdminClient({"bootstrap.servers": self.address, "log_level": 0}).list_topics(timeout=2)
            return True
        except KafkaException:
            return False
