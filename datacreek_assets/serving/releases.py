"""Which of a tenant's trained models can be released: the newest one whose evaluation passed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Candidate:
    version: str  # v<registered MLflow model version>
    run_key: str
    base_path: str  # the shared base GGUF (f16)
    adapter_path: str  # the tenant's LoRA GGUF, applied by llama.cpp to the base
    tuned_f1: float


def newest_passing_model(tenant_dir: Path) -> Candidate | None:
    """From the tenant's evaluation reports (one per trained model, see qa_eval)."""
    best = None
    for path in sorted((tenant_dir / "eval").glob("*.json")):
        if path.name == "latest.json":
            continue
        report = json.loads(path.read_text())
        if not report.get("passed") or report.get("model_version") is None:
            continue
        manifest_path = tenant_dir / "gguf" / report["run_key"] / "manifest.json"
        if not manifest_path.exists():
            continue
        manifest = json.loads(manifest_path.read_text())
        if not (Path(manifest["base_f16"]).exists() and Path(manifest["lora"]["path"]).exists()):
            continue
        candidate = Candidate(f"v{int(report['model_version'])}", report["run_key"], manifest["base_f16"],
                              manifest["lora"]["path"], float(report["tuned"]["f1"]))
        if best is None or int(candidate.version[1:]) > int(best.version[1:]):
            best = candidate
    return best
