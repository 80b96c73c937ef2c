"""Where local state lives and which ports the local services use.

Read from the environment only when called (CLI start, definition build),
never at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from datacreek_assets.finetune.base_model import SMOLLM2, TINY

PROFILES = ("local", "prod")
CPU_FALLBACKS = ("int8", "fp32")
# How a training starts: "auto" (`accelerate launch` with DeepSpeed ZeRO-3 on a node with several
# GPUs, plain torch on one), "accelerate" (always launched), "torch" (always in the step's process).
LAUNCHERS = ("auto", "accelerate", "torch")


class ConfigError(ValueError):
    """Configuration that cannot work (unknown profile, bad port...)."""


@dataclass(frozen=True)
class LocalSettings:
    """Everything the local profile needs to find its state and services."""

    state_dir: Path
    neo4j_port: int = 7687
    falkordb_port: int = 6380
    cache_dir: Path | None = None
    base_model: str = SMOLLM2  # or TINY, a 2-layer random Llama (tests)
    eval_margin: float = 0.02  # tuned mean F1 must beat the base's by this much to release
    # Without a GPU (or after losing a spot GPU node): "int8" trains with the base in 8-bit
    # through bitsandbytes' CPU backend; "fp32" keeps the base in full precision.
    cpu_fallback: str = "int8"
    training_launcher: str = "auto"
    ray_port: int = 6390  # the local Ray head's GCS port; its client server uses the next one
    postgres_port: int = 5433  # PostgreSQL for the stores' Postgres tests and a local prod profile
    serve_port: int = 8100  # the serving router's HTTP port
    kafka_port: int = 9092  # the event log's broker; its KRaft controller listens on the next port
    flink_rest_port: int = 8081  # the hot-graph stream job's Flink REST API (its health)
    # canary policy (the demo and the tests shorten it: a real canary earns production over minutes)
    canary_min_requests: int = 20
    canary_promote_after_s: float = 300.0
    canary_promote_min_requests: int = 100
    canary_min_p99_gap_ms: float = 25.0  # below this absolute p99 gap a ratio is noise, not a regression

    @property
    def dagster_home(self) -> Path:
        return self.state_dir / "dagster_home"

    @property
    def object_store_root(self) -> Path:
        return self.state_dir / "objects"

    @property
    def registry_url(self) -> str:
        return f"sqlite:///{self.state_dir / 'registry.db'}"

    @property
    def ledger_url(self) -> str:
        return f"sqlite:///{self.state_dir / 'ledger.db'}"

    @property
    def curation_url(self) -> str:
        return f"sqlite:///{self.state_dir / 'curation.db'}"

    @property
    def serving_url(self) -> str:
        return f"sqlite:///{self.state_dir / 'serving.db'}"

    def serving_admin_token(self) -> str:
        """The local router's admin token."""
        return self._kept_secret(Path("serving") / "admin_token")

    def event_signing_secret(self) -> str:
        """The local platform's secret that tenants' event signing keys derive from (the services,
        the stream job and the CLI read the same one)."""
        return self._kept_secret(Path("streaming") / "event_signing_secret")

    def _kept_secret(self, relative: Path) -> str:
        """A random secret made once (owner-only file, published by rename) and kept in the state dir."""
        import secrets

        path = self.state_dir / relative
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}")
            partial.write_text(secrets.token_urlsafe(32))
            partial.chmod(0o600)
            partial.replace(path)
        return path.read_text().strip()

    @property
    def kafka_tenant_port(self) -> int:
        """Kafka's listener for tenants' SCRAM users (the controller has the port before it)."""
        return self.kafka_port + 2

    @property
    def neo4j_uri(self) -> str:
        return f"bolt://127.0.0.1:{self.neo4j_port}"

    @property
    def download_cache(self) -> Path:
        return self.cache_dir or Path.home() / ".cache" / "datacreek"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "LocalSettings":
        env = os.environ if environ is None else environ
        state_dir = Path(env.get("DATACREEK_STATE_DIR", ".datacreek")).resolve()
        cache = env.get("DATACREEK_CACHE_DIR")
        return cls(
            state_dir=state_dir,
            neo4j_port=_port(env, "DATACREEK_NEO4J_PORT", 7687),
            falkordb_port=_port(env, "DATACREEK_FALKORDB_PORT", 6380),
            ray_port=_port(env, "DATACREEK_RAY_PORT", 6390),
            serve_port=_port(env, "DATACREEK_SERVE_PORT", 8100),
            postgres_port=_port(env, "DATACREEK_POSTGRES_PORT", 5433),
            kafka_port=_port(env, "DATACREEK_KAFKA_PORT", 9092),
            flink_rest_port=_port(env, "DATACREEK_FLINK_REST_PORT", 8081),
            cache_dir=Path(cache).resolve() if cache else None,
            base_model=_choice(env, "DATACREEK_BASE_MODEL", (SMOLLM2, TINY), SMOLLM2),
            cpu_fallback=_choice(env, "DATACREEK_CPU_FALLBACK", CPU_FALLBACKS, "int8"),
            training_launcher=_choice(env, "DATACREEK_TRAINING_LAUNCHER", LAUNCHERS, "auto"),
        )


def current_profile(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    profile = env.get("DATACREEK_PROFILE", "local")
    if profile not in PROFILES:
        raise ConfigError(f"DATACREEK_PROFILE={profile!r} is not one of {', '.join(PROFILES)}")
    return profile


def _choice(env, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = env.get(name, default)
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(allowed)}")
    return value


def _port(env, name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name}={port} is outside 1..65535")
    return port


def ensure_dagster_home(home: Path) -> Path:
    """Create a local Dagster home (SQLite storage in that directory) if missing."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(
            "# Local profile: SQLite run/event/schedule storage in this directory.\n"
            "telemetry:\n  enabled: false\n"
            "# every run gets datacreek/tenant (from its partition) before it is queued\n"
            "run_coordinator:\n"
            "  module: datacreek_assets.run_coordinator\n"
            "  class: TenantTaggingRunCoordinator\n"
            "  config:\n"
            "    max_concurrent_runs: 4\n"
            "    dequeue_interval_seconds: 1\n"
            "    tag_concurrency_limits:\n"
            "      - key: datacreek/tenant\n"
            "        value:\n          applyLimitPerUniqueValue: true\n"
            "        limit: 1\n"
            "# each run forks from a process that has loaded the code location (warm_runs.py) and the\n"
            "# libraries most steps import; not feast or torch: ~15 s to load, used by few runs\n"
            "run_launcher:\n"
            "  module: datacreek_assets.warm_runs\n"
            "  class: WarmProcessRunLauncher\n"
            "  config:\n"
            "    preload_modules: [neo4j, bs4, markdown_it, pypdf, tokenizers]\n"
            "# the daemon asks the launcher whether each run's process lives: a run whose process died\n"
            "# (OOM-killed, SIGKILL) fails instead of holding its tenant's run slot\n"
            "run_monitoring:\n"
            "  enabled: true\n"
            "  poll_interval_seconds: 15\n"
            "  max_resume_run_attempts: 0\n"
        )
    return home
