"""feast is imported without typeguard's per-method instrumentation, and typeguard is left as it was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Each in a fresh interpreter: the test process may have imported feast already. An instrumented
# method's code imports typeguard's helpers, so its code object names `typeguard`.
PLAIN = """
import feast
print("typeguard" in feast.FeatureView.__init__.__code__.co_names)
"""
OURS = """
import sys, typeguard
checked = typeguard.typechecked
import resources.factory, datacreek_assets.cli.tenant  # what the CLI loads before opening a store
from datacreek_assets.embeddings.feature_store import FeatureStoreSettings, import_feast
assert "feast" not in sys.modules, "feast imported before import_feast could skip the instrumentation"
FeatureStoreSettings(registry="/tmp/registry.db", offline_dir="/tmp/offline").repo_config()
feast = sys.modules["feast"]
assert typeguard.typechecked is checked, "typeguard left patched"
assert import_feast() is feast
print("typeguard" in feast.FeatureView.__init__.__code__.co_names)
from feature_repo.features import definitions
print(sorted(d.name for d in definitions("/tmp/offline")))
"""


def run(script: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_feast_loads_without_typeguard_instrumenting_its_classes_and_typeguard_is_restored():
    assert run(PLAIN) == ["True"], "feast no longer instruments its classes: import_feast can go"
    lines = run(OURS)
    assert lines[0] == "False"  # FeatureView's constructor is feast's own code, not a recompiled copy
    assert lines[1] == str(sorted(["chunk_embeddings", "chunk_topology", "embedding", "tenant"]))
