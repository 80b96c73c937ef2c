"""materialize_tenant says what a run does now, for the CLI's one progress bar: the step being
built and, while a training runs in it, the training's step, total steps and loss."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import dagster as dg

from datacreek_assets.finetune.training import STEP_OBSERVER
from datacreek_assets.partitions import TENANTS_PARTITION, tenant_asset
from datacreek_assets.runner import activity_line, materialize_tenant


SHOWN: list[str] = []  # what the runner reported, appended from the polling thread


def wait_until_shown(pattern: str, timeout_s: float = 120.0) -> None:
    """Hold the step until the runner (polling every 0.5 s) has shown it: no race with a busy machine.
    On a timeout the step goes on and the test's assertions say what was never shown."""
    deadline = time.monotonic() + timeout_s
    while not any(re.fullmatch(pattern, line) for line in SHOWN) and time.monotonic() < deadline:
        time.sleep(0.05)


@tenant_asset()
def prepared() -> None:
    wait_until_shown("building prepared")


@tenant_asset(deps=[prepared])
def trained() -> None:
    """A real LoRA training (train_lora) of a one-layer random Llama: 4 optimizer steps."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from datacreek_assets.finetune.packing import PackedRow
    from datacreek_assets.finetune.training import TrainConfig, train_lora, wrap_lora

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    config = TrainConfig(lora_rank=2, effective_batch=2, max_steps=4, target_modules=("q_proj", "v_proj"))
    rows = [PackedRow(list(range(1, 9)), list(range(1, 9)), list(range(8)), [1] * 8) for _ in range(8)]
    with tempfile.TemporaryDirectory() as out:
        train_lora(wrap_lora(model, config), 0, rows, [], config, Path(out))
    wait_until_shown(r"trained: step 4/4, loss .*")


def test_activity_names_the_step_being_built_and_the_training_step_total_and_loss():
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(TENANTS_PARTITION, ["acme"])
    defs = dg.Definitions(assets=[prepared, trained], executor=dg.in_process_executor)
    lines, done = SHOWN, []
    lines.clear()
    summary = materialize_tenant(defs, "acme", instance, ["prepared", "trained"], on_activity=lines.append,
                                 on_progress=lambda key, n, total: done.append((key, n, total)))
    assert summary.success, summary.error
    assert done == [("prepared", 1, 2), ("trained", 2, 2)]
    assert "building prepared" in lines
    assert re.fullmatch(r"trained: step 4/4, loss \d+\.\d{4}", lines[-1]), lines
    assert all(line in ("building prepared", "building trained") or line.startswith("trained: step ")
               for line in lines), lines
    assert STEP_OBSERVER.get() is None  # set in the run's thread only


def test_activity_line():
    assert activity_line("gguf_model", None) == "building gguf_model"
    assert activity_line("finetuned_adapter", (12, 40, 2.31404)) == "finetuned_adapter: step 12/40, loss 2.3140"


BACKGROUND_RUN = """
import json, os, signal, sys, time
import dagster as dg, psutil
from dagster._core.execution import compute_logs
from dagster._utils.interrupts import setup_interrupt_handlers
from datacreek_assets.runner import materialize_tenant

tenants = dg.DynamicPartitionsDefinition(name="tenants")

@dg.asset(partitions_def=tenants)
def one() -> int:
    print("one")
    return 1

@dg.asset(partitions_def=tenants)
def two(one: int) -> int:
    return one + 1

os.makedirs(sys.argv[1])
setup_interrupt_handlers()  # as every Dagster CLI does: SIGTERM takes SIGINT's (ignored) disposition
tails = []  # Dagster's log mirrors, counted: the test fails if none was started
mirror = compute_logs.execute_posix_tail

def counted(*args):
    tails.append(args)
    return mirror(*args)

compute_logs.execute_posix_tail = counted
with dg.DagsterInstance.local_temp(sys.argv[1]) as instance:  # compute logs mirrored through `tail -F`
    instance.add_dynamic_partitions("tenants", ["acme"])
    summary = materialize_tenant(dg.Definitions(assets=[one, two]), "acme", instance, selection=["one", "two"])
    left = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)]
    os.kill(os.getpid(), signal.SIGINT)  # still ignored here, as the shell asked
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
    print(json.dumps({"success": summary.success, "mirrors": len(tails), "left": left}))
"""


def test_a_run_started_in_the_background_stops_its_log_tailers_and_still_ignores_sigint(tmp_path):
    """A process started by a non-interactive shell in the background ignores SIGINT, and Dagster
    gives SIGTERM the same disposition; its `tail -F` log mirrors then ignored the SIGTERM that
    stops them: every step waited 30 s for them and left them running (61 s against 1.3 s per
    tenant for three steps, measured). The runner lets its children take the default actions."""
    import json
    import signal
    import subprocess
    import sys

    import psutil

    out, err = tmp_path / "stdout", tmp_path / "stderr"
    try:
        # to files, not pipes: a tailer left running would hold a pipe open, and the test would hang
        with out.open("w") as stdout, err.open("w") as stderr:
            code = subprocess.run([sys.executable, "-c", BACKGROUND_RUN, str(tmp_path / "home")], stdout=stdout,
                                  stderr=stderr, timeout=300,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)).returncode
        assert code == 0, err.read_text()[-3000:]
        report = json.loads(out.read_text().strip().splitlines()[-1])
        assert report["mirrors"] >= 2  # stdout and stderr of at least one step
        assert report == {"success": True, "mirrors": report["mirrors"], "left": []}
    finally:
        for process in psutil.process_iter(["cmdline"]):
            try:
                if any(str(tmp_path) in arg for arg in process.info["cmdline"] or []):
                    process.kill()
            except psutil.Error:  # gone meanwhile
                pass


def test_a_progress_read_that_meets_the_run_s_write_is_read_again_not_raised():
    """An in-memory instance's SQLite refuses a read of a table another connection is writing
    ("database table is locked"); the runner's progress poll once died of it mid-run (CI)."""
    import pytest
    import sqlalchemy as sa

    from datacreek_assets.runner import LAUNCH_TOKEN_TAG, _run_launched_with, _while_running

    @dg.op
    def one() -> int:
        return 1

    @dg.job
    def launched():
        one()

    instance = dg.DagsterInstance.ephemeral()
    run_id = launched.execute_in_process(instance=instance, tags={LAUNCH_TOKEN_TAG: "t1"}).run_id
    with instance.run_storage._engine.connect() as writer:  # the run's writes, held open
        transaction = writer.begin()
        writer.execute(sa.text("UPDATE runs SET status = status WHERE 0"))
        with pytest.raises(sa.exc.OperationalError, match="locked"):
            _run_launched_with(instance, "t1")
        assert _while_running(_run_launched_with, instance, "t1") is None
        transaction.rollback()
    assert _while_running(_run_launched_with, instance, "t1") == run_id
