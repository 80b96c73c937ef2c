"""Process start costs: loading the code location, and `datacreek --help`.

Every Dagster run and step process loads the code location before it does any work, so its load
time is part of each tenant run's overhead.

- **Code location load (local profile).** Candidate: a fresh Python builds the definitions as a run
  worker does. Baseline: the same, with dagster-aws and dagster-mlflow imported at load, as a plain
  module-level import of the integrations would do (the project imports them when they are used:
  S3Resource in the prod profile, the MLflow run-end hook when a step ends).
- **`datacreek --help`.** Candidate: the CLI as installed (commands import what they need when they
  run). Baseline: `python -c "import dagster"`, the floor for any command that imports Dagster.
- **Opening a tenant's feature store** (as `datacreek tenant delete-document` or an embeddings step
  does first). Candidate: a fresh Python opens the local profile's store, which imports feast
  through `import_feast` (no typeguard instrumentation of feast's classes). Baseline: the same,
  with `import feast` first, as feast instruments itself.

The notes give each candidate's median seconds per process (the goal for `--help` is at most 1 s).
"""

from __future__ import annotations

import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import Comparison

REPO = Path(__file__).resolve().parents[1]
LOAD = ("import sys; from pathlib import Path; {extra}"
        "from datacreek_assets.defs import build_definitions; from datacreek_assets.settings import LocalSettings; "
        "build_definitions('local', LocalSettings(state_dir=Path(sys.argv[1])))")
EAGER_INTEGRATIONS = "import dagster_aws.s3, dagster_mlflow; "
OPEN_FEATURES = ("import sys; from pathlib import Path; {extra}"
                 "from datacreek_assets.settings import LocalSettings; "
                 "from resources.factory import build_resources; "
                 "build_resources('local', LocalSettings(state_dir=Path(sys.argv[1])))['feature_store'].for_tenant('bench')")


def _processes(argv: list[str], n: int, seconds: list[float]):
    def go() -> int:
        for _ in range(n):
            start = time.perf_counter()
            subprocess.run(argv, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seconds.append(time.perf_counter() - start)
        return n

    return go


def _median(seconds: list[float]) -> str:
    return f"{statistics.median(seconds):.2f} s" if seconds else "not run"


_state_dirs: list[str] = []


def comparisons(quick: bool = False) -> list[Comparison]:
    n, repeats = (1, 1) if quick else (3, 3)
    state = tempfile.mkdtemp(prefix="bench-startup-")  # the local profile's secrets land here
    _state_dirs.append(state)
    python = sys.executable
    datacreek = str(Path(python).parent / "datacreek")
    load_s: list[float] = []
    help_s: list[float] = []
    features_s: list[float] = []
    instrumented_s: list[float] = []
    return [
        Comparison("code location load (local profile)",
                   _processes([python, "-c", LOAD.format(extra=""), state], n, load_s),
                   _processes([python, "-c", LOAD.format(extra=EAGER_INTEGRATIONS), state], n, []),
                   unit="loads", repeats=repeats, notes=lambda: f"candidate median {_median(load_s)} per load"),
        Comparison("datacreek --help vs import dagster",
                   _processes([datacreek, "--help"], n, help_s),
                   _processes([python, "-c", "import dagster"], n, []),
                   unit="processes", repeats=repeats,
                   notes=lambda: f"candidate median {_median(help_s)} per `datacreek --help` (goal ≤ 1 s)"),
        Comparison("opening a feature store: feast without vs with typeguard",
                   _processes([python, "-c", OPEN_FEATURES.format(extra=""), state], n, features_s),
                   _processes([python, "-c", OPEN_FEATURES.format(extra="import feast; "), state], n, instrumented_s),
                   unit="processes", repeats=repeats,
                   notes=lambda: f"median per process: candidate {_median(features_s)}, "
                                 f"baseline {_median(instrumented_s)}"),
    ]


def teardown() -> None:
    while _state_dirs:
        shutil.rmtree(_state_dirs.pop(), ignore_errors=True)
