"""Fine-tuning on a tiny random Llama: packing, accumulation, resume after kill, GGUF export in llama.cpp."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from datacreek_assets import cpu_features  # noqa: E402
from datacreek_assets.finetune.base_model import load_base  # noqa: E402
from datacreek_assets.finetune.packing import IGNORE, PackedRow, collate, encode, pack  # noqa: E402
from datacreek_assets.finetune.training import (  # noqa: E402
    TrainConfig, accumulation_steps, forward_precision, micro_batch_for, micro_batches, plan_device, precision_of,
    real_share, token_loss_sum, train_lora, wrap_lora,
)
from tests.cpu_flags import cpu_flags  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FACTS = [("json", "encodes and decodes JSON documents"), ("csv", "reads and writes comma separated files"),
         ("pathlib", "offers object oriented filesystem paths"), ("sqlite3", "talks to SQLite databases"),
         ("zipfile", "reads and writes ZIP archives"), ("hashlib", "computes secure hashes"),
         ("argparse", "parses command line arguments"), ("logging", "records events from programs")]


def chats(n: int = 24) -> list[dict]:
    out = []
    for i in range(n):
        name, what = FACTS[i % len(FACTS)]
        out.append({"messages": [{"role": "system", "content": "Answer briefly."},
                                 {"role": "user", "content": f"What does the {name} module do?"},
                                 {"role": "assistant", "content": f"The {name} module {what}."}],
                    "split": "validation" if i % 6 == 5 else "train"})
    return out


@pytest.fixture
def tiny(tiny_dir):
    return load_base(tiny_dir)


def rows(tokenizer, max_len=96):
    examples = [encode(tokenizer, c["messages"], max_len) for c in chats() if c["split"] == "train"]
    return pack(examples, max_len)


def test_prompt_tokens_are_masked_and_the_answer_is_labelled(tiny):
    _, tokenizer = tiny
    example = encode(tokenizer, chats()[0]["messages"], 200)
    labelled = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE]
    assert tokenizer.decode(labelled).strip() == "The json module encodes and decodes JSON documents.<|im_end|>"
    assert example.labels[0] == IGNORE and labelled
    assert encode(tokenizer, chats()[0]["messages"], 10) is None  # too long: dropped, not truncated


def test_a_packed_row_computes_what_its_examples_compute_alone(tiny):
    model, tokenizer = tiny
    examples = [encode(tokenizer, c["messages"], 200) for c in chats(3)]
    packed = pack(examples, 400)
    assert len(packed) == 1 and packed[0].segments[-1] == 3
    batch = collate(packed, tokenizer.pad_token_id)
    with torch.no_grad():
        together = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         position_ids=batch["position_ids"]).logits[0]
        start = 0
        order = sorted(range(3), key=lambda i: -len(examples[i].input_ids))
        for i in order:
            n = len(examples[i].input_ids)
            alone = model(input_ids=torch.tensor([examples[i].input_ids])).logits[0]
            # A leak across segments moves logits by a good part of their size; fp32 summation order
            # (it differs with the CPU's kernels) by ~1e-6 of it: judge relative to the logits' scale.
            assert torch.allclose(together[start:start + n], alone, rtol=0, atol=1e-4 * float(alone.abs().max()))
            start += n


def test_micro_batch_is_the_largest_divisor_that_fits_and_accumulation_makes_up_the_rest():
    assert micro_batch_for(8, lambda m: m <= 3) == 2
    assert accumulation_steps(8, 2) == 4
    assert micro_batch_for(12, lambda m: m <= 6) == 6 and accumulation_steps(12, 6) == 2
    assert micro_batch_for(7, lambda m: True) == 7 and accumulation_steps(7, 7) == 1
    with pytest.raises(MemoryError):
        micro_batch_for(8, lambda m: False)
    with pytest.raises(ValueError):
        accumulation_steps(8, 3)


def test_on_a_cpu_the_micro_batch_is_the_largest_of_the_fast_ones_that_fit():
    measured = {1: 270.0, 2: 331.0, 7: 320.0, 14: 235.0}  # tokens/s shaped like fp32 eager on a CPU (illustrative)
    assert micro_batch_for(14, lambda m: True, measured.get) == 7  # within 5 % of the fastest (2 rows)
    assert micro_batch_for(14, lambda m: m <= 2, measured.get) == 2  # only what fits counts
    assert micro_batch_for(14, lambda m: True, {1: 300.0, 2: 400.0, 7: 500.0, 14: 600.0}.get) == 14
    assert micro_batch_for(14, lambda m: True, {1: 300.0, 2: 400.0, 7: None, 14: None}.get) == 14  # not timed (GPU)


def test_the_micro_batch_probe_is_measured_once_and_kept_with_its_speed(tiny, tmp_path, monkeypatch):
    from datacreek_assets.finetune import training

    model, tokenizer = tiny
    config = TrainConfig(lora_rank=4, effective_batch=4, max_seq_len=96, max_steps=1, checkpoint_every=100)
    cache = tmp_path / "probe.json"
    cache.write_text(json.dumps({"1": 1.0, "2": 1.0, "4": 1.0}))  # an older cache: the peak alone, measured again
    first = train_lora(wrap_lora(copy.deepcopy(model), config), tokenizer.pad_token_id, rows(tokenizer), [],
                       config, tmp_path / "a", probe_cache=cache)
    kept = json.loads(cache.read_text())
    assert set(kept) == {"1", "2", "4"} and all(v["peak_mb"] >= 0 and v["tokens_per_s"] > 0 for v in kept.values())
    assert first.probe_tokens_per_s == {int(m): v["tokens_per_s"] for m, v in kept.items()}
    # the second training reads the cache: no forward pass is probed, and it picks what the speeds say
    monkeypatch.setattr(training, "probe_micro_batch", lambda *a: pytest.fail("probed again"))
    cache.write_text(json.dumps({m: {**v, "tokens_per_s": 100.0 * (m == "2") + 1.0} for m, v in kept.items()}))
    second = train_lora(wrap_lora(copy.deepcopy(model), config), tokenizer.pad_token_id, rows(tokenizer), [],
                        config, tmp_path / "b", probe_cache=cache)
    assert second.micro_batch == 2 and second.accumulation == 2
    # the probe times full rows: an epoch's speed at each size is that times the share of its positions
    # that are real, so a size that pads more loses to an equally fast one that pads less
    cache.write_text(json.dumps({m: {**v, "tokens_per_s": 100.0} for m, v in kept.items()}))
    shares = {1: 1.0, 2: 0.97, 4: 0.9}
    monkeypatch.setattr(training, "real_share", lambda rows, config, m, rank, ranks, fill: shares[m])
    weighed = train_lora(wrap_lora(copy.deepcopy(model), config), tokenizer.pad_token_id, rows(tokenizer), [],
                         config, tmp_path / "d", probe_cache=cache)
    assert weighed.micro_batch == 2  # within 5 % of the fastest (1 row, 100 % real); 4 rows are 10 % padding
    # not timed (as for compiled layers, whose speed the eager probe does not measure): the largest
    untimed = dataclasses.replace(config, micro_batch_by_speed=False)
    third = train_lora(wrap_lora(copy.deepcopy(model), untimed), tokenizer.pad_token_id, rows(tokenizer), [],
                       untimed, tmp_path / "c", probe_cache=cache)
    assert third.micro_batch == 4 and third.accumulation == 1


def test_accumulated_micro_batches_give_the_gradient_of_one_big_batch(tiny):
    model, tokenizer = tiny
    peft_model = wrap_lora(model, TrainConfig(lora_rank=4))
    # LoRA B starts at zero; give it values so the A gradients are not trivially zero
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    packed = rows(tokenizer, max_len=64)[:4]
    total = sum(r.label_tokens for r in packed)

    def grads(micro):
        peft_model.zero_grad()
        for i in range(0, 4, micro):
            loss, _ = token_loss_sum(peft_model, collate(packed[i:i + micro], tokenizer.pad_token_id))
            (loss / total).backward()
        return {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}

    one, accumulated = grads(4), grads(1)
    for name in one:  # relative to the gradient's scale: summation order differs with the CPU's kernels
        scale = float(one[name].abs().max())
        assert scale > 0 and torch.allclose(one[name], accumulated[name], rtol=0, atol=1e-4 * scale), name


def test_a_steps_micro_batches_put_rows_of_like_length_together_and_keep_every_row_once():
    lengths = [270, 512, 265, 505, 268, 511, 490, 260]  # a step's rows in its permutation's order
    step = [PackedRow([1] * n, [IGNORE] * n, list(range(n)), [1] * n) for n in lengths]

    def padded(groups):  # positions computed: each micro-batch is padded to its longest row
        return sum(len(g) * max(len(r.input_ids) for r in g) for g in groups)

    groups = micro_batches(step, 2)
    assert [[len(r.input_ids) for r in g] for g in groups] == [[512, 511], [505, 490], [270, 268], [265, 260]]
    in_order = [step[i:i + 2] for i in range(0, len(step), 2)]
    assert padded(groups) == sum(lengths) + 1 + 15 + 2 + 5 < padded(in_order)
    # two processes: each takes every other row of the sorted step, so each gets rows of like length
    ranks = [micro_batches(step, 2, rank, 2) for rank in range(2)]
    assert [[len(r.input_ids) for r in g] for g in ranks[0]] == [[512, 505], [270, 265]]
    assert [[len(r.input_ids) for r in g] for g in ranks[1]] == [[511, 490], [268, 260]]
    taken = [id(r) for shares in ranks for g in shares for r in g]
    assert sorted(taken) == sorted(id(r) for r in step)
    # an epoch of that one step: the real share of the positions its micro-batches compute
    config = TrainConfig(effective_batch=len(step))
    assert real_share(step, config, 1) == 1.0
    assert real_share(step, config, 2) == pytest.approx(sum(lengths) / padded(groups))
    assert real_share(step, config, 8) == pytest.approx(sum(lengths) / (8 * 512))
    # equal lengths keep the permutation's order; an epoch's short last step ends with a smaller micro-batch
    ties = [PackedRow([1] * 8, [IGNORE] * 8, list(range(8)), [1] * 8) for _ in range(5)]
    groups = micro_batches(ties, 2)
    assert [len(g) for g in groups] == [2, 2, 1]
    assert [id(r) for g in groups for r in g] == [id(r) for r in ties]


def test_device_plan():
    assert plan_device(0, "int8").load_in_8bit and plan_device(0, "int8").device == "cpu"
    assert not plan_device(0, "fp32").load_in_8bit
    one = plan_device(1, "int8")
    assert one.device == "cuda" and one.accelerate_config is None and one.gpus == 1 and one.placement == ""
    multi = plan_device(4, "int8", deepspeed=True)
    assert multi.accelerate_config and Path(multi.accelerate_config).read_text().count("zero_stage: 3") == 1
    # an accelerate launch occupies (and is billed for) every GPU, one process each
    assert (multi.gpus, multi.processes, multi.placement) == (4, 4, "accelerate4")
    assert plan_device(4, "int8", "torch").gpus == 1 and plan_device(4, "int8", "torch").accelerate_config is None
    assert plan_device(1, "int8", "accelerate", deepspeed=True).accelerate_config == multi.accelerate_config
    # without DeepSpeed: "auto" trains on one GPU and says why; an explicit "accelerate" is refused
    fallback = plan_device(4, "int8", deepspeed=False)
    assert fallback.accelerate_config is None and fallback.gpus == 1 and "DeepSpeed is not installed" in fallback.reason
    with pytest.raises(ValueError, match="needs DeepSpeed"):
        plan_device(2, "int8", "accelerate", deepspeed=False)
    cpu = plan_device(0, "int8", "accelerate")  # no DeepSpeed without GPUs, and no 8-bit base
    assert cpu.device == "cpu" and not cpu.load_in_8bit and cpu.gpus == 0
    assert "DEEPSPEED" not in Path(cpu.accelerate_config).read_text()
    with pytest.raises(ValueError):
        plan_device(0, "int4")
    with pytest.raises(ValueError, match="launcher must be one of"):
        plan_device(2, "int8", "deepspeed")


def test_gpu_bf16_autocast_applies_on_cuda_only_and_keys_its_own_runs():
    import contextlib

    from datacreek_assets.finetune.pipeline import run_key

    bf16, fp32 = TrainConfig(gpu_precision="bf16"), TrainConfig()
    assert precision_of("cuda", False, bf16) == "bf16" and precision_of("cuda", False, fp32) == "fp32"
    assert precision_of("cpu", False, bf16) == "fp32" and precision_of("cpu", True, bf16) == "int8"
    assert isinstance(forward_precision("cpu", bf16), contextlib.nullcontext)
    assert isinstance(forward_precision("cuda", bf16), torch.autocast)
    assert isinstance(forward_precision("cuda", fp32), contextlib.nullcontext)
    # the placement carries the precision: on CPU the setting computes nothing different, so it
    # keys the same run; and the keys of checkpoints written before the setting existed still hold
    assert run_key("d1", "base", bf16, "cpu-fp32") == run_key("d1", "base", fp32, "cpu-fp32")
    # (pinned with the sequence length those checkpoints were written with, the default until grounded records)
    assert run_key("d1", "smollm2-135m-instruct", TrainConfig(max_seq_len=256), "cuda-fp32") == "97810dbaed278221"
    with pytest.raises(ValueError, match="gpu_precision must be one of"):
        TrainConfig(gpu_precision="fp16")


TRAIN_SCRIPT = """
import os, sys, signal, torch
torch.set_num_threads(1)
from pathlib import Path
from datacreek_assets.finetune.base_model import load_base
from datacreek_assets.finetune.training import TrainConfig, train_lora, wrap_lora
from tests.unit.test_finetune import rows
model, tokenizer = load_base(Path(sys.argv[1]))
# the micro-batch by memory: a timed choice could differ between the straight and the killed run
config = TrainConfig(lora_rank=4, effective_batch=2, checkpoint_every=2, eval_every=3, max_steps=7, seed=3,
                     micro_batch_by_speed=False)
torch.manual_seed(0)
peft_model = wrap_lora(model, config)
kill_at = int(sys.argv[3])
def on_step(step, loss):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
result = train_lora(peft_model, tokenizer.pad_token_id, rows(tokenizer), rows(tokenizer)[:2], config, Path(sys.argv[2]), on_step=on_step)
print(result.resumed_from)
"""


def _train(tiny_dir, out: Path, kill_at: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, str(tiny_dir), str(out), str(kill_at)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_cpu_bf16_autocast_keys_its_own_runs_and_is_used_only_where_it_applies(monkeypatch, tmp_path):
    from datacreek_assets.finetune.launch import launch_command
    from datacreek_assets.finetune.pipeline import effective_config, run_key

    bf16, fp32 = TrainConfig(cpu_precision="bf16"), TrainConfig()
    assert precision_of("cpu", False, bf16) == "bf16" and precision_of("cuda", False, bf16) == "fp32"
    assert precision_of("cpu", True, bf16) == "int8"
    context = forward_precision("cpu", bf16)
    assert isinstance(context, torch.autocast) and context.device == "cpu" and context.fast_dtype == torch.bfloat16
    # the placement carries the precision; cpu_precision alone changes no other run's key
    assert run_key("d1", "base", bf16, "cuda-fp32") == run_key("d1", "base", fp32, "cuda-fp32")
    assert run_key("d1", "base", bf16, "cpu-bf16") != run_key("d1", "base", bf16, "cpu-fp32")
    with pytest.raises(ValueError, match="cpu_precision must be one of"):
        TrainConfig(cpu_precision="fp16")
    # a CPU launch under accelerate autocasts the same way
    command = launch_command(plan_device(0, "fp32", "accelerate"), bf16, tmp_path)
    assert command[command.index("--mixed_precision") + 1] == "bf16"
    command = launch_command(plan_device(0, "fp32", "accelerate"), fp32, tmp_path)
    assert command[command.index("--mixed_precision") + 1] == "no"

    # a speed setting: where it would not apply or would be slower than fp32, the training runs in fp32 and says why
    for native in (True, False):
        monkeypatch.setattr(cpu_features, "fast_bf16", lambda native=native: native)
        used, why = effective_config("cpu", False, False, bf16)
        assert (used.cpu_precision, bool(why)) == (("bf16", False) if native else ("fp32", True))
        used, why = effective_config("cpu", True, False, bf16)
        assert used.cpu_precision == "fp32" and why == "cpu_precision bf16 does not apply to an int8 base"
        assert effective_config("cuda", False, False, bf16) == (bf16, "")
        assert effective_config("cpu", False, False, fp32) == (fp32, "")
    # compiled layers: on an fp32 base, CPU (its own widest kernels) or CUDA; never on an int8 base, nor in
    # launched processes
    compiled = TrainConfig(compile_layers=True)
    monkeypatch.setattr(cpu_features, "inductor_native_kernels", lambda: True)
    assert effective_config("cpu", False, False, compiled) == (compiled, "")
    assert effective_config("cuda", False, False, compiled) == (compiled, "")
    used, why = effective_config("cpu", True, False, compiled)
    assert not used.compile_layers and why == "compile_layers does not apply to an int8 base"
    used, why = effective_config("cuda", False, True, compiled)
    assert not used.compile_layers and why == "compile_layers does not apply under `accelerate launch`"
    # inductor's AVX2 kernels on an AVX-512 CPU gave NaN losses in training: eager there, and the plan says why
    monkeypatch.setattr(cpu_features, "inductor_native_kernels", lambda: False)
    used, why = effective_config("cpu", False, False, compiled)
    assert not used.compile_layers and "widest kernels only" in why
    assert effective_config("cuda", False, False, compiled) == (compiled, "")


def test_cpu_bf16_training_follows_the_fp32_loss_curve(tiny_dir, tmp_path):
    """Computed wherever it is asked for (emulated without native bf16), so this holds on every CPU."""
    torch.set_num_threads(1)
    curves = {}
    for precision in ("fp32", "bf16"):
        model, tokenizer = load_base(tiny_dir)
        config = TrainConfig(lora_rank=4, effective_batch=4, epochs=3, learning_rate=5e-3, eval_every=100,
                             cpu_precision=precision, micro_batch_by_speed=False)  # the same micro-batches
        torch.manual_seed(0)
        result = train_lora(wrap_lora(model, config), tokenizer.pad_token_id, rows(tokenizer), [], config,
                            tmp_path / precision)
        curves[precision] = [loss for _, loss in result.losses]
    assert curves["fp32"] != curves["bf16"]  # it did compute in another precision
    assert curves["bf16"][-1] < curves["bf16"][0] - 2  # and it learned (9.8 to 6.1 here)
    assert max(abs(a - b) / a for a, b in zip(curves["fp32"], curves["bf16"])) < 0.02  # 0.004 measured


@pytest.mark.parametrize("capability", [None, "avx2", "default"])
def test_compiled_cpu_training_is_used_with_the_cpu_s_own_widest_kernels_only(capability):
    """Read from the CPU's flags, not from torch: AVX-512 (or AVX2 without AVX-512) as the CPU has
    it; never when ATEN_CPU_CAPABILITY holds an AVX-512 CPU to AVX2 (NaN losses there), nor at
    `default` (inductor's unvectorised C++ did not compile)."""
    flags = cpu_flags()
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    answer = subprocess.run([sys.executable, "-c", "from datacreek_assets import cpu_features; "
                             "print(cpu_features.inductor_native_kernels())"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert answer.returncode == 0, answer.stderr[-2000:]
    avx512, avx2 = "avx512f" in flags, "avx2" in flags
    expected = {None: avx512 or avx2, "avx2": avx2 and not avx512, "default": False}[capability]
    assert answer.stdout.strip() == str(expected)


@pytest.mark.skipif(not cpu_features.inductor_native_kernels(),
                    reason="compiled CPU training is used with the CPU's own widest kernels only")
def test_compiled_layers_train_on_cpu_what_eager_layers_train(tiny_dir, tmp_path, monkeypatch):
    """torch.compile on CPU (inductor's C++ kernels, built for whatever CPU runs the test): the same
    losses as eager, over steps whose row widths differ (52 to 63 tokens)."""
    from torch._dynamo.utils import counters

    torch.set_num_threads(1)
    # dynamo falls back to eager silently when a layer needs more graphs than its cache holds
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    curves = {}
    for compiled in (False, True):
        model, tokenizer = load_base(tiny_dir)
        config = TrainConfig(lora_rank=4, effective_batch=4, epochs=2, learning_rate=5e-3, eval_every=100,
                             compile_layers=compiled, micro_batch_by_speed=False)  # the same micro-batches
        torch.manual_seed(0)
        peft_model = wrap_lora(model, config)
        counters.clear()
        result = train_lora(peft_model, tokenizer.pad_token_id, rows(tokenizer), [], config, tmp_path / str(compiled))
        # every layer ran compiled code: graphs were built, and no layer broke out of its graph into eager
        assert (counters["stats"]["unique_graphs"] > 0) == compiled and not counters["graph_break"]
        curves[compiled] = [loss for _, loss in result.losses]
    assert len(curves[True]) == len(curves[False]) > 2 and curves[True][-1] < curves[True][0] - 1
    assert max(abs(a - b) / a for a, b in zip(curves[False], curves[True])) < 1e-5  # 2e-7 measured


def test_a_non_finite_loss_stops_the_training_before_any_checkpoint(tiny_dir, tmp_path, monkeypatch):
    import datacreek_assets.finetune.training as training

    real = training.token_loss_sum

    def nan_loss(model, batch):  # as a miscompiled or diverged step gives
        loss, n = real(model, batch)
        return loss * float("nan"), n

    monkeypatch.setattr(training, "token_loss_sum", nan_loss)
    model, tokenizer = load_base(tiny_dir)
    config = TrainConfig(lora_rank=4, effective_batch=4, epochs=1, checkpoint_every=1, eval_every=100)
    with pytest.raises(FloatingPointError, match="training loss is nan at step 1; no checkpoint written"):
        train_lora(wrap_lora(model, config), tokenizer.pad_token_id, rows(tokenizer), [], config, tmp_path)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_run_ends(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    straight = _train(tiny_dir, tmp_path / "straight", kill_at=-1)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = _train(tiny_dir, tmp_path / "resumed", kill_at=5)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "resumed" / "adapter").exists()
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").glob("step-*")) == ["step-000002", "step-000004"]
    resumed = _train(tiny_dir, tmp_path / "resumed", kill_at=-1)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.split()[-1] == "4"  # resumed after step 4
    a = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    state_a = json.loads((tmp_path / "straight" / "checkpoints" / "step-000007" / "state.json").read_text())
    state_b = json.loads((tmp_path / "resumed" / "checkpoints" / "step-000007" / "state.json").read_text())
    assert np.allclose([x[1] for x in state_a["losses"]], [x[1] for x in state_b["losses"]], atol=1e-6)
    assert np.allclose(state_a["val_losses"], state_b["val_losses"], atol=1e-6)


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    """A tiny model with a trained adapter (so greedy outputs are not ties)."""
    torch.set_num_threads(1)
    model, tokenizer = load_base(tiny_dir)
    config = TrainConfig(lora_rank=4, effective_batch=4, max_steps=30, learning_rate=5e-3, eval_every=100,
                         micro_batch_by_speed=False)
    torch.manual_seed(0)  # the LoRA initialisation: the same adapter whichever tests ran first
    peft_model = wrap_lora(model, config)
    out = tmp_path_factory.mktemp("trained")
    train_lora(peft_model, tokenizer.pad_token_id, rows(tokenizer), [], config, out)
    return peft_model.eval(), tokenizer, out


def prompt_ids(tokenizer):
    text = tokenizer.apply_chat_template(chats()[0]["messages"][:-1], add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def merged_of(tiny_dir, adapter_dir):
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(tiny_dir)[0], adapter_dir).merge_and_unload().eval()


def test_gguf_export_matches_torch_in_llama_cpp(trained, tiny_dir, tmp_path):
    from peft import PeftModel

    from datacreek_assets.finetune.gguf_export import export_lora, export_model
    from datacreek_assets.finetune.llama_cpp import check_gguf, f16_emulation, teacher_forced_ids, torch_logits

    peft_model, tokenizer, out = trained
    merged = merged_of(tiny_dir, out / "adapter")
    ids = teacher_forced_ids(merged, prompt_ids(tokenizer), {tokenizer.eos_token_id})
    assert len(ids) > len(prompt_ids(tokenizer))
    f32 = export_model(merged, tokenizer, tmp_path / "m.f32.gguf", "f32")
    exact = check_gguf(merged, Path(f32.path), ids)
    assert exact.passed and exact.max_abs_logit_diff < 1e-3 and exact.argmax_mismatches == 0
    f16_file = export_model(merged, tokenizer, tmp_path / "m.f16.gguf", "f16")
    f16 = check_gguf(merged, Path(f16_file.path), ids, emulation=f16_emulation(merged))
    assert f16.passed, f16
    assert 0 < f16.emulated_error < f16.error_bound and f16.positions_checked > 0  # the margin rule is not vacuous
    q8 = export_model(merged, tokenizer, tmp_path / "m.q8_0.gguf", "q8_0")
    assert q8.bytes < f16_file.bytes
    # 8-bit weights: the error stays small next to the range of the sequence's logits
    spread = float(np.ptp(torch_logits(merged, ids)))
    assert check_gguf(merged, Path(q8.path), ids).max_abs_logit_diff < 0.05 * spread
    # base file + the adapter alone, applied by llama.cpp at load time
    base = export_model(load_base(tiny_dir)[0], tokenizer, tmp_path / "base.f32.gguf", "f32")
    adapter = export_lora(PeftModel.from_pretrained(load_base(tiny_dir)[0], out / "adapter"), tokenizer,
                          tmp_path / "adapter.gguf")
    assert adapter.tensors == 2 * 7 * 2  # A and B, 7 modules, 2 layers
    with_adapter = check_gguf(merged, Path(base.path), ids, lora_path=Path(adapter.path))
    assert with_adapter.passed and with_adapter.max_abs_logit_diff < 1e-3
    without = check_gguf(merged, Path(base.path), ids)
    assert not without.passed
    assert without.max_abs_logit_diff > 10 * with_adapter.max_abs_logit_diff  # the adapter really changes logits


def test_averaged_adapters_add_the_mean_of_the_members_updates_and_llama_cpp_applies_them(tiny_dir, tmp_path):
    """Two seeds' adapters averaged: the merged weights are the mean of each member's merged weights,
    the adapter's rank is the members' sum, the members and the average are scored alike, and
    llama.cpp applies the averaged adapter to the base file as torch computes it."""
    from peft import PeftModel

    from datacreek_assets.finetune.averaging import average_adapters
    from datacreek_assets.finetune.packing import rows_for
    from datacreek_assets.finetune.gguf_export import export_lora, export_model
    from datacreek_assets.finetune.llama_cpp import check_gguf, teacher_forced_ids
    from datacreek_assets.finetune.training import validation_loss

    torch.set_num_threads(1)
    members = []
    for seed in (0, 1):
        model, tokenizer = load_base(tiny_dir)
        config = TrainConfig(lora_rank=4, effective_batch=4, max_steps=8, learning_rate=5e-3, eval_every=100,
                             micro_batch_by_speed=False, seed=seed)
        torch.manual_seed(seed)
        train_lora(wrap_lora(model, config), tokenizer.pad_token_id, rows(tokenizer), [], config, tmp_path / f"m{seed}")
        tokenizer.save_pretrained(tmp_path / f"m{seed}" / "adapter")
        members.append(tmp_path / f"m{seed}" / "adapter")
    val_chats = [c for c in chats() if c["split"] == "validation"]
    val, _ = rows_for(tokenizer, val_chats, 96)
    out = tmp_path / "averaged"
    out.mkdir()
    (out / "stale.txt").write_text("from an interrupted earlier averaging")
    averaged = average_adapters(tiny_dir, members, out, val_chats, 96)
    assert averaged.rank == 8 and Path(averaged.adapter_dir) == out
    assert not (out / "stale.txt").exists() and not out.with_name("averaged.partial").exists()
    assert (out / "tokenizer.json").exists()  # export and evaluation read the tokenizer beside the adapter

    merged = [merged_of(tiny_dir, m).state_dict() for m in members]
    averaged_model = merged_of(tiny_dir, out)
    base = load_base(tiny_dir)[0].state_dict()
    changed = 0
    for name, weight in averaged_model.state_dict().items():
        mean = (merged[0][name] + merged[1][name]) / 2
        assert torch.allclose(weight, mean, atol=1e-6), name
        changed += not torch.equal(mean, base[name])
    assert changed == 2 * 7  # every LoRA-targeted projection of both layers moved
    assert not torch.allclose(merged[0]["model.layers.0.self_attn.q_proj.weight"],
                              merged[1]["model.layers.0.self_attn.q_proj.weight"])  # the seeds really differ

    def loss(adapter_dir):
        peft_model = PeftModel.from_pretrained(load_base(tiny_dir)[0], adapter_dir).eval()
        with torch.inference_mode():
            return validation_loss(lambda b: token_loss_sum(peft_model, b), val, 1, tokenizer.pad_token_id, "cpu")

    assert averaged.member_val_losses == pytest.approx([loss(m) for m in members], rel=1e-5)
    assert averaged.val_loss == pytest.approx(loss(out), rel=1e-5)

    ids = teacher_forced_ids(averaged_model, prompt_ids(tokenizer), {tokenizer.eos_token_id})
    base_file = export_model(load_base(tiny_dir)[0], tokenizer, tmp_path / "base.f32.gguf", "f32")
    adapter = export_lora(PeftModel.from_pretrained(load_base(tiny_dir)[0], out), tokenizer, tmp_path / "avg.gguf")
    applied = check_gguf(averaged_model, Path(base_file.path), ids, lora_path=Path(adapter.path))
    assert applied.passed and applied.max_abs_logit_diff < 1e-3
    with pytest.raises(ValueError, match="at least two"):
        average_adapters(tiny_dir, members[:1], tmp_path / "one", val_chats, 96)


def test_average_seeds_is_bounded_and_left_out_of_a_members_run_key():
    from datacreek_assets.finetune.pipeline import averaged_run_key, run_key

    with pytest.raises(ValueError, match="average_seeds"):
        TrainConfig(average_seeds=0)
    with pytest.raises(ValueError, match="average_seeds"):
        TrainConfig(average_seeds=9)
    alone, member = TrainConfig(seed=1), TrainConfig(seed=1, average_seeds=3)
    assert run_key("v1", "b", alone, "cpu-fp32") == run_key("v1", "b", member, "cpu-fp32")  # reused as a member
    assert run_key("v1", "b", alone, "cpu-fp32") != run_key("v1", "b", TrainConfig(seed=2), "cpu-fp32")
    assert averaged_run_key(["a", "b"]) != averaged_run_key(["b", "a"])
    assert averaged_run_key(["a", "b"]) != averaged_run_key(["a", "b", "c"])


class Tampered:
    """What a buggy exporter would read: the model's config and state dict, edited."""

    def __init__(self, model, edit=lambda name, tensor: tensor, **config_changes):
        self.config = copy.deepcopy(model.config)
        for key, value in config_changes.items():
            setattr(self.config, key, value)
        self._model, self._edit = model, edit

    def state_dict(self):
        return {name: self._edit(name, tensor) for name, tensor in self._model.state_dict().items()}


BREAKAGES = {
    "rotary permutation dropped": {"no_permute": True},
    "transposed projection": {"edit": lambda name, t: t.T if name.endswith("layers.0.self_attn.o_proj.weight") else t},
    "wrong norm epsilon": {"rms_norm_eps": 1e-2},  # llama.cpp reads the epsilon from the file
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_f16_export_fails_the_check(trained, tiny_dir, tmp_path, monkeypatch, breakage):
    from datacreek_assets.finetune import gguf_export
    from datacreek_assets.finetune.llama_cpp import check_gguf, f16_emulation, teacher_forced_ids

    _, tokenizer, out = trained
    merged = merged_of(tiny_dir, out / "adapter")
    ids = teacher_forced_ids(merged, prompt_ids(tokenizer), {tokenizer.eos_token_id})
    spec = dict(BREAKAGES[breakage])
    if spec.pop("no_permute", False):
        monkeypatch.setattr(gguf_export, "permute_rows", lambda weight, heads: weight)
    broken = gguf_export.export_model(Tampered(merged, **spec), tokenizer, tmp_path / "broken.f16.gguf", "f16")
    result = check_gguf(merged, Path(broken.path), ids, emulation=f16_emulation(merged))
    assert not result.passed, result
    f32 = gguf_export.export_model(Tampered(merged, **spec), tokenizer, tmp_path / "broken.f32.gguf", "f32")
    assert not check_gguf(merged, Path(f32.path), ids).passed


def test_an_adapter_with_the_wrong_scale_fails_the_check(trained, tiny_dir, tmp_path):
    from peft import PeftModel

    from datacreek_assets.finetune.gguf_export import export_lora, export_model
    from datacreek_assets.finetune.llama_cpp import check_gguf, f16_emulation, teacher_forced_ids

    _, tokenizer, out = trained
    peft_model = PeftModel.from_pretrained(load_base(tiny_dir)[0], out / "adapter").eval()
    merged = merged_of(tiny_dir, out / "adapter")
    ids = teacher_forced_ids(merged, prompt_ids(tokenizer), {tokenizer.eos_token_id})
    base = export_model(load_base(tiny_dir)[0], tokenizer, tmp_path / "base.f16.gguf", "f16")
    right = export_lora(peft_model, tokenizer, tmp_path / "adapter.gguf")
    assert check_gguf(merged, Path(base.path), ids, Path(right.path), emulation=f16_emulation(peft_model)).passed
    scaled = copy.deepcopy(peft_model)
    scaled.peft_config["default"].lora_alpha *= 2  # the file says alpha twice what was trained
    wrong = export_lora(scaled, tokenizer, tmp_path / "adapter.x2.gguf")
    result = check_gguf(merged, Path(base.path), ids, Path(wrong.path), emulation=f16_emulation(peft_model))
    assert not result.passed, result


def test_the_f16_check_passes_random_models_of_20_seeds(tmp_path):
    """f16 rounding alone never fails the check, whatever the weights and the CPU's kernels: 20
    random tiny models (fresh LoRA matrices too), each as a merged f16 file and as base + adapter."""
    from peft import LoraConfig, get_peft_model

    from datacreek_assets.finetune.base_model import tiny_llama
    from datacreek_assets.finetune.gguf_export import export_lora, export_model
    from datacreek_assets.finetune.llama_cpp import check_gguf, f16_emulation, teacher_forced_ids

    corpus = [" ".join(f"{name} {what}" for name, what in FACTS)] * 4
    measured = []
    for seed in range(20):
        model, tokenizer = tiny_llama(corpus, vocab_size=512, seed=seed)
        base = export_model(model, tokenizer, tmp_path / f"base{seed}.f16.gguf", "f16")
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                      "gate_proj", "up_proj", "down_proj"])).eval()
        adapter = export_lora(peft_model, tokenizer, tmp_path / f"adapter{seed}.gguf")
        emulated_adapter = f16_emulation(peft_model)
        merged = copy.deepcopy(peft_model).merge_and_unload().eval()
        ids = teacher_forced_ids(merged, prompt_ids(tokenizer), {tokenizer.eos_token_id})
        f16 = export_model(merged, tokenizer, tmp_path / f"merged{seed}.f16.gguf", "f16")
        for kind, result in (("f16", check_gguf(merged, Path(f16.path), ids, emulation=f16_emulation(merged))),
                             ("adapter", check_gguf(merged, Path(base.path), ids, Path(adapter.path),
                                                    emulation=emulated_adapter))):
            measured.append((seed, kind, result))
    failed = [(seed, kind, r) for seed, kind, r in measured if not r.passed]
    assert not failed, failed
    ratios = [r.max_abs_logit_diff / r.emulated_error for _, _, r in measured]
    print(f"llama.cpp f16 error / emulated f16 error: max {max(ratios):.2f}, median {np.median(ratios):.2f}; "
          f"relative |Δlogit| max {max(r.relative_diff for _, _, r in measured):.4f}; "
          f"positions checked {sum(r.positions_checked for _, _, r in measured)} of "
          f"{sum(r.positions for _, _, r in measured)}")
    assert sum(r.positions_checked for _, _, r in measured) > 0


def test_llama_cpp_is_built_for_one_instruction_set():
    """Every machine runs llama.cpp's AVX2 kernels (LLAMA_CMAKE_ARGS), whatever its CPU has: a
    native build would judge GGUF files with other kernels on AVX-512 and AMX machines."""
    import llama_cpp

    features = dict(item.split(" = ") for item in llama_cpp.llama_print_system_info().decode().split(" | ")
                    if " = " in item)
    assert features.get("AVX2") == "1" and features.get("FMA") == "1" and features.get("F16C") == "1"
    if os.environ.get("DATACREEK_LLAMA_VARIANT") == "avx512":  # scripts/test-cpu-variants.sh's second build
        assert features.get("AVX512") == "1"
    else:
        assert not any(name.startswith(("AVX512", "AMX")) for name in features), features


def test_export_refuses_what_it_cannot_write(tiny, tmp_path):
    from datacreek_assets.finetune.gguf_export import ExportError, export_model, gguf_name

    model, tokenizer = tiny
    with pytest.raises(ExportError):
        export_model(model, tokenizer, tmp_path / "x.gguf", "q3_k")
    with pytest.raises(ExportError):
        gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq")
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.iterdir())


def test_a_training_killed_without_notice_is_measured_when_it_is_rescheduled(tmp_path):
    from datacreek_assets.finetune.heartbeat import TrainingHeartbeat

    path = tmp_path / "training_heartbeat.json"
    script = ("import os, signal, sys\nfrom pathlib import Path\n"
              "from datacreek_assets.finetune.heartbeat import TrainingHeartbeat\n"
              "beat = TrainingHeartbeat(Path(sys.argv[1]))\n"
              "for step in range(1, 4):\n    beat.beat('key', step, 'cuda')\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    heartbeat = TrainingHeartbeat(path)
    last = json.loads(path.read_text())
    assert (last["state"], last["step"]) == ("running", 3)
    assert heartbeat.rescheduled_after(now=last["at"] + 42.5) == pytest.approx(42.5)
    heartbeat.close("interrupted")  # SIGTERM, turned into an interrupt: an eviction too
    assert heartbeat.rescheduled_after() is not None
    heartbeat.close("stopped")  # a training that ended in Python (a failure, its quota) is not
    assert heartbeat.rescheduled_after() is None
    assert TrainingHeartbeat(tmp_path / "never.json").rescheduled_after() is None
