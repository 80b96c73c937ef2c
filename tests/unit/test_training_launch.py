"""Training started by `accelerate launch` (CPU here; DeepSpeed ZeRO-3 on GPUs, bench/finetune_gpu.py):
it trains what the in-process loop trains, reports every step, stops on request with a
checkpoint, resumes to the uninterrupted result, and a broken job fails with the launch's log."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from datacreek_assets.finetune.base_model import load_base  # noqa: E402
from datacreek_assets.finetune.launch import LaunchFailed, _progress, run_launched, write_job  # noqa: E402
from datacreek_assets.finetune.training import (  # noqa: E402
    STEP_OBSERVER, TrainConfig, plan_device, train_lora, wrap_lora,
)
from tests.unit.test_finetune import rows  # noqa: E402

# micro-batches by memory, not by a timing: two launches that time their micro-batches on a busy
# machine can pick different ones (1 x 2 against 2 x 1), and then sum the same gradients in another
# order, which the resume test below would read as a difference
CONFIG = TrainConfig(lora_rank=4, effective_batch=2, checkpoint_every=100, eval_every=2, epochs=3, seed=5,
                     learning_rate=5e-3, micro_batch_by_speed=False)
PLAN = plan_device(0, "fp32", "accelerate")


def adapter(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter" / "adapter_model.safetensors")


def launched(tiny_dir, out: Path, config: TrainConfig, on_step=None):
    _, tokenizer = load_base(tiny_dir)
    train = rows(tokenizer)
    write_job(out / "launch", tiny_dir, out, config, tokenizer.pad_token_id, train, train[:2], threads=1)
    return run_launched(PLAN, config, out / "launch", on_step=on_step, poll_s=0.1)


class Quota(Exception):
    pass


def test_a_launched_training_trains_what_the_in_process_loop_trains(tiny_dir, tmp_path):
    torch.set_num_threads(1)
    model, tokenizer = load_base(tiny_dir)
    train = rows(tokenizer)
    assert len(train) >= 6
    config = TrainConfig(**{**CONFIG.__dict__, "max_steps": 3})  # full steps only: no epoch-end fill
    seen, shown = [], []
    token = STEP_OBSERVER.set(lambda step, total, loss: shown.append((step, total)))  # the CLI's progress bar
    try:
        result = launched(tiny_dir, tmp_path / "launched", config, on_step=lambda step, loss: seen.append((step, loss)))
    finally:
        STEP_OBSERVER.reset(token)
    assert shown == [(1, 3), (2, 3), (3, 3)]
    torch.manual_seed(config.seed)
    local = train_lora(wrap_lora(model, config), tokenizer.pad_token_id, train, train[:2], config, tmp_path / "local")
    assert [s for s, _ in seen] == [1, 2, 3] and seen == result.losses
    assert result.steps == 3 and result.micro_batch * result.accumulation == 2
    assert len(local.losses) == len(result.losses)
    for (_, a), (_, b) in zip(result.losses, local.losses):
        assert a == pytest.approx(b, rel=1e-5)
    ours, theirs = adapter(tmp_path / "launched"), adapter(tmp_path / "local")
    assert ours.keys() == theirs.keys() and ours
    for key in ours:
        assert torch.allclose(ours[key], theirs[key], atol=1e-5), key
    assert any(float(ours[key].abs().max()) > 0 for key in ours if "lora_B" in key)  # it did learn


def test_a_stopped_launch_checkpoints_and_resumes_to_the_uninterrupted_result(tiny_dir, tmp_path):
    config = TrainConfig(**{**CONFIG.__dict__, "max_steps": 7})
    straight = launched(tiny_dir, tmp_path / "straight", config)
    _, tokenizer = load_base(tiny_dir)
    train = rows(tokenizer)
    job = tmp_path / "resumed" / "launch"
    write_job(job, tiny_dir, tmp_path / "resumed", config, tokenizer.pad_token_id, train, train[:2], threads=1)
    # the stop request a raising on_step writes, written ahead: the launch reads it at its first step
    # boundary, so the stop lands on step 1 however fast this machine trains
    (job / "stop").touch()
    seen = []

    def out_of_credits(step: int, loss: float) -> None:
        seen.append(step)
        raise Quota("out of credits")

    with pytest.raises(Quota):
        run_launched(PLAN, config, job, on_step=out_of_credits, poll_s=0.1)
    assert seen == [1]
    assert not (job / "rows.json").exists()  # the tenant's tokenized records leave with the launch
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").glob("step-*")] == ["step-000001"]
    assert (tmp_path / "resumed" / "checkpoints" / "step-000001" / "accelerate").is_dir()  # model, optimizer, RNG
    assert not (tmp_path / "resumed" / "adapter").exists()
    assert "stopped after step 1" in (job / "launch.log").read_text()
    resumed = launched(tiny_dir, tmp_path / "resumed", config)
    assert resumed.resumed_from == 1 and resumed.steps == straight.steps == 7
    assert (resumed.micro_batch, resumed.accumulation) == (straight.micro_batch, straight.accumulation)
    assert [s for s, _ in resumed.losses] == list(range(1, 8))
    assert len(straight.losses) == 7
    for (_, a), (_, b) in zip(resumed.losses, straight.losses):
        assert a == pytest.approx(b, rel=1e-5)
    a, b = adapter(tmp_path / "straight"), adapter(tmp_path / "resumed")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_progress_waits_for_a_line_still_being_written(tmp_path):
    (tmp_path / "progress.jsonl").write_text('{"step": 1, "total": 3, "loss": 2.5}\n{"step": 2, "tot')
    assert _progress(tmp_path) == [(1, 3, 2.5)]


def test_a_broken_launch_fails_with_its_log(tiny_dir, tmp_path):
    _, tokenizer = load_base(tiny_dir)
    train = rows(tokenizer)
    write_job(tmp_path / "launch", tmp_path / "no-such-base", tmp_path, CONFIG, tokenizer.pad_token_id, train, [],
              threads=1)
    with pytest.raises(LaunchFailed, match="no-such-base"):
        run_launched(PLAN, CONFIG, tmp_path / "launch", poll_s=0.1)
    assert not (tmp_path / "adapter").exists()
