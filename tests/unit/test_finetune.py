"""Fine-tuning on a tiny random Llama: packing, accumulation, resume after kill, GGUF export in llama.cpp."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from datacreek_assets.finetune.base_model import TINY, base_model_dir, load_base  # noqa: E402
from datacreek_assets.finetune.packing import IGNORE, collate, encode, pack  # noqa: E402
from datacreek_assets.finetune.training import (  # noqa: E402
    TrainConfig, accumulation_steps, forward_precision, micro_batch_for, plan_device, precision_of, token_loss_sum,
    train_lora, wrap_lora,
)

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


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return base_model_dir(TINY, tmp_path_factory.mktemp("base"))


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
            assert torch.allclose(together[start:start + n], alone, atol=1e-5)
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
    for name in one:
        assert torch.allclose(one[name], accumulated[name], atol=1e-6), name


def test_device_plan():
    assert plan_device(0, "int8").load_in_8bit and plan_device(0, "int8").device == "cpu"
    assert not plan_device(0, "fp32").load_in_8bit
    assert plan_device(1, "int8").device == "cuda" and plan_device(1, "int8").accelerate_config is None
    multi = plan_device(4, "int8")
    assert multi.accelerate_config and Path(multi.accelerate_config).read_text().count("zero_stage: 3") == 1
    with pytest.raises(ValueError):
        plan_device(0, "int4")


def test_bf16_autocast_applies_on_cuda_only_and_keys_its_own_runs():
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
    assert run_key("d1", "smollm2-135m-instruct", fp32, "cuda-fp32") == "97810dbaed278221"
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
config = TrainConfig(lora_rank=4, effective_batch=2, checkpoint_every=2, eval_every=3, max_steps=7, seed=3)
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
    config = TrainConfig(lora_rank=4, effective_batch=4, max_steps=30, learning_rate=5e-3, eval_every=100)
    peft_model = wrap_lora(model, config)
    out = tmp_path_factory.mktemp("trained")
    train_lora(peft_model, tokenizer.pad_token_id, rows(tokenizer), [], config, out)
    return peft_model.eval(), tokenizer, out


def prompt_ids(tokenizer):
    text = tokenizer.apply_chat_template(chats()[0]["messages"][:-1], add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_gguf_export_matches_torch_in_llama_cpp(trained, tiny_dir, tmp_path):
    from peft import PeftModel

    from datacreek_assets.finetune.gguf_export import export_lora, export_model
    from datacreek_assets.finetune.llama_cpp import verify_against_torch

    peft_model, tokenizer, out = trained
    merged = PeftModel.from_pretrained(load_base(tiny_dir)[0], out / "adapter").merge_and_unload().eval()
    stop = {tokenizer.eos_token_id}
    ids = prompt_ids(tokenizer)
    f32 = export_model(merged, tokenizer, tmp_path / "m.f32.gguf", "f32")
    exact = verify_against_torch(merged, Path(f32.path), ids, stop)
    assert exact.max_abs_logit_diff < 1e-3 and exact.greedy_match and exact.torch_tokens
    f16 = verify_against_torch(merged, Path(export_model(merged, tokenizer, tmp_path / "m.f16.gguf", "f16").path), ids, stop)
    assert f16.greedy_match and f16.max_abs_logit_diff < 0.05
    q8 = export_model(merged, tokenizer, tmp_path / "m.q8_0.gguf", "q8_0")
    assert q8.bytes < Path(f16.path).stat().st_size
    from datacreek_assets.finetune.llama_cpp import torch_logits

    spread = float(np.ptp(torch_logits(merged, ids)))  # 8-bit weights: error small next to the logits' range
    assert verify_against_torch(merged, Path(q8.path), ids, stop).max_abs_logit_diff < 0.05 * spread
    # base file + the adapter alone, applied by llama.cpp at load time
    base = export_model(load_base(tiny_dir)[0], tokenizer, tmp_path / "base.f32.gguf", "f32")
    adapter = export_lora(PeftModel.from_pretrained(load_base(tiny_dir)[0], out / "adapter"), tokenizer,
                          tmp_path / "adapter.gguf")
    assert adapter.tensors == 2 * 7 * 2  # A and B, 7 modules, 2 layers
    with_adapter = verify_against_torch(merged, Path(base.path), ids, stop, lora_path=Path(adapter.path))
    assert with_adapter.max_abs_logit_diff < 1e-3 and with_adapter.greedy_match
    without = verify_against_torch(merged, Path(base.path), ids, stop)
    assert without.max_abs_logit_diff > 10 * with_adapter.max_abs_logit_diff  # the adapter really changes logits


def test_a_broken_export_is_caught_by_the_logit_check(trained, tiny_dir, tmp_path):
    """Without the rotary permutation llama.cpp computes something else: the check must see it."""
    from peft import PeftModel

    from datacreek_assets.finetune import gguf_export
    from datacreek_assets.finetune.llama_cpp import verify_against_torch

    _, tokenizer, out = trained
    merged = PeftModel.from_pretrained(load_base(tiny_dir)[0], out / "adapter").merge_and_unload().eval()
    original = gguf_export.permute_rows
    gguf_export.permute_rows = lambda weight, heads: weight
    try:
        broken = gguf_export.export_model(merged, tokenizer, tmp_path / "broken.gguf", "f32")
    finally:
        gguf_export.permute_rows = original
    assert verify_against_torch(merged, Path(broken.path), prompt_ids(tokenizer), {0}).max_abs_logit_diff > 1e-3


def test_export_refuses_what_it_cannot_write(tiny, tmp_path):
    from datacreek_assets.finetune.gguf_export import ExportError, export_lora, export_model, gguf_name

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
