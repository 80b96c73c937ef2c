"""datacreek_assets.quiet hides the named third-party warnings, log lines and progress bars, each
raised here by the library itself, and lets the project's own warnings and log lines through."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from datacreek_assets import quiet

REPO = Path(__file__).resolve().parents[2]


def caught(emit, filtered: bool) -> list[tuple[type, str]]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # what shows without any filter, every time
        if filtered:
            quiet.install_warning_filters()
        emit()
    return [(w.category, str(w.message)) for w in seen]


def dagster_beta_parameter():
    import dagster as dg

    @dg.asset(backfill_policy=dg.BackfillPolicy.single_run())
    def some_asset() -> None: ...


def transformers_deprecated_property():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    _ = LlamaForCausalLM(config).is_gradient_checkpointing  # what peft reads on every get_peft_model


def warn_from(module: str, category: type[Warning], message: str):
    """A warning raised by code of ``module`` (warnings attributes it to the caller's __name__)."""
    return lambda: exec("import warnings\nwarnings.warn(message, category)",
                        {"__name__": module, "message": message, "category": category})


@pytest.mark.parametrize("emit, category, text", [
    (dagster_beta_parameter, "BetaWarning", "`backfill_policy` of function `asset` is currently in beta"),
    (transformers_deprecated_property, FutureWarning, "`is_gradient_checkpointing` is deprecated"),
], ids=["dagster-beta", "transformers-deprecation"])
def test_named_third_party_warnings_are_hidden(emit, category, text):
    def matching(seen):
        return [m for c, m in seen if (c.__name__ if isinstance(category, str) else c) == category and text in m]

    assert matching(caught(emit, filtered=False)), "the library no longer warns: drop its filter"
    assert matching(caught(emit, filtered=True)) == []


def test_project_warnings_pass_even_with_a_third_party_category_or_message():
    import dagster as dg

    project = [
        warn_from("datacreek_assets.ingest.parsing", UserWarning, "quarantined inbox/x.pdf: not a PDF"),
        # the same category or text as a hidden warning, raised by the project: still shown
        warn_from("datacreek_assets.defs.finetune.assets", dg.BetaWarning, "our beta"),
        warn_from("datacreek_assets.finetune.training", FutureWarning, "`is_gradient_checkpointing` is deprecated"),
        warn_from("datacreek_assets.embeddings.feature_store", DeprecationWarning, "our deprecation"),
        warn_from("resources.stores", DeprecationWarning, "our deprecation"),
        # a hidden library, another category or message: shown
        warn_from("transformers.modeling_utils", UserWarning, "`is_gradient_checkpointing` is deprecated"),
        warn_from("transformers.modeling_utils", FutureWarning, "something else is deprecated"),
    ]
    for emit in project:
        assert len(caught(emit, filtered=True)) == 1
    # a library's DeprecationWarning, which importing feast turns on for every module: hidden again
    assert caught(warn_from("transformers.utils.generic", DeprecationWarning, "x is deprecated"), filtered=True) == []


FEAST_THEN_RAY = """
import tempfile, warnings
from pathlib import Path
from datacreek_assets.quiet import quiet_third_party
quiet_third_party()
from datacreek_assets.embeddings.feature_store import FeatureStoreSettings, open_feature_store
tmp = Path(tempfile.mkdtemp())
open_feature_store(FeatureStoreSettings(registry=str(tmp / "registry.db"), offline_dir=str(tmp / "offline"),
                                        online={"type": "sqlite", "path": str(tmp / "online.db")}))
from ray import serve  # pydantic's deprecation of Ray Serve's config: shown once feast is imported
exec("import warnings; warnings.warn('ours', DeprecationWarning)", {"__name__": "datacreek_assets.x"})
"""


def test_deprecation_warnings_stay_hidden_after_importing_feast_turns_them_on(tmp_path):
    env = {**os.environ, "DATACREEK_STATE_DIR": str(tmp_path), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("DATACREEK_QUIET", None)
    out = subprocess.run([sys.executable, "-c", FEAST_THEN_RAY], capture_output=True, text=True, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == ["<string>:1: DeprecationWarning: ours"]  # only the project's


def test_bitsandbytes_per_matmul_line_is_hidden_and_other_log_lines_are_not(caplog, monkeypatch):
    import bitsandbytes as bnb
    import torch

    layer = bnb.nn.Linear8bitLt(16, 8, bias=False, has_fp16_weights=False)
    layer.load_state_dict({"weight": torch.randn(8, 16)})
    layer = layer.to("cpu").eval()  # inference in 8-bit on CPU: MatMul8bitLt, as the demo's evaluations

    def forward_lines() -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            layer(torch.randn(2, 16))
        return [r.getMessage() for r in caplog.records if r.name.startswith("bitsandbytes")]

    logger = logging.getLogger("bitsandbytes.autograd._functions")
    monkeypatch.setattr(logger, "filters", [])  # as before quiet_third_party()
    assert any("MatMul8bitLt: inputs will be cast" in line for line in forward_lines()), "bitsandbytes changed"
    quiet.install_log_filters()
    assert forward_lines() == []

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        logger.warning("some other bitsandbytes warning")  # only the named message is dropped
        logging.getLogger("datacreek_assets.billing.meter").warning("meter m: billing beat failed (x)")
    assert [r.getMessage() for r in caplog.records] == ["some other bitsandbytes warning",
                                                       "meter m: billing beat failed (x)"]


PROBE = """
import sys
if sys.argv[1] == "quiet":
    from datacreek_assets.quiet import quiet_third_party
    quiet_third_party()
from tqdm.auto import tqdm
from huggingface_hub.utils import are_progress_bars_disabled
from transformers.utils import logging
print(tqdm(range(3)).disable, not logging.is_progress_bar_enabled(), are_progress_bars_disabled())
"""


def test_library_progress_bars_are_off_in_a_fresh_process():
    env = {k: v for k, v in os.environ.items() if k not in quiet.PROGRESS_ENV and k != "DATACREEK_QUIET"}

    def bars_off(mode: str) -> str:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, cwd=REPO)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert bars_off("as-is") == "False False False"  # tqdm, transformers, huggingface_hub: on by default
    assert bars_off("quiet") == "True True True"


def test_loading_the_code_location_prints_nothing(tmp_path):
    """What `dagster dev`, its code server and every run worker do first: load definitions.py."""
    code = "import definitions; definitions.defs()"
    env = {**os.environ, "DATACREEK_STATE_DIR": str(tmp_path)}
    env.pop("DATACREEK_QUIET", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # it printed 28 lines of Dagster BetaWarnings


def test_the_cli_quiets_before_running_a_command(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from datacreek_assets.cli import cli

    calls = []
    monkeypatch.setattr(quiet, "quiet_third_party", lambda: calls.append(1))
    env = {"DATACREEK_STATE_DIR": str(tmp_path), "DATACREEK_NEO4J_PORT": "1", "DATACREEK_FALKORDB_PORT": "1"}
    assert CliRunner().invoke(cli, ["tenant", "list"], env=env).exit_code == 0
    assert calls == [1]
