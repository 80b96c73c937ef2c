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


def test_a_run_s_left_over_log_tailers_are_stopped_and_no_one_else_s(tmp_path):
    """Dagster's `tail -F` mirrors of a run's compute logs once outlived a failed run and held the
    CLI's stdout open; after the run, the runner stops those of that run only."""
    import signal
    import subprocess
    import uuid

    from datacreek_assets.runner import _stop_log_tailers

    logs = {run: tmp_path / run / "compute_logs" / "step.out" for run in (uuid.uuid4().hex, uuid.uuid4().hex)}
    tailers = {}
    for run, path in logs.items():
        path.parent.mkdir(parents=True)
        path.write_text("")
        # as the leftovers were: SIGTERM (Dagster's own way to stop them) ignored
        tailers[run] = subprocess.Popen(["tail", "-F", "-c", "+0", str(path)], stdout=subprocess.DEVNULL,
                                        preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))
    ours, other = logs
    try:
        time.sleep(0.2)  # both running
        _stop_log_tailers(ours)
        assert tailers[ours].wait(10) == -signal.SIGKILL
        assert tailers[other].poll() is None  # another run's mirror goes on
    finally:
        for process in tailers.values():
            process.kill()
            process.wait()


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
