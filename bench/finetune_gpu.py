"""LoRA training on a GPU: the asset's loop on CUDA vs transformers `Trainer` on CUDA, and vs CPU.

A GPU machine here has PyTorch, transformers and peft but none of the platform's services,
and cannot download, so the check comes in two halves:

    python -m bench.finetune_gpu prepare DIR   # here: tokenized SFT rows, tokenizer, the base GGUF in parts
    python -m bench.finetune_gpu run DIR OUT   # there: train, compare, write OUT/finetune_gpu.json

`prepare` tokenizes the demo tenant's SFT examples exactly as `bench.finetune` does and
splits SmolLM2's Q4_1 GGUF into parts small enough to send. `run` dequantizes the GGUF to
the same fp32 base the `finetuned_adapter` asset trains, then measures, side by side:

- tokens/s of the asset's loop (packed rows, measured micro-batch) against transformers
  `Trainer` + peft (padded batches), both fp32 on the GPU, the same LoRA config and examples;
- tokens/s of the loop with bfloat16 autocast (`gpu_precision="bf16"`) against the loop in
  fp32 (the default), and the peak memory and last step's loss of each;
- tokens/s of the loop as shipped on the GPU against the same loop on the machine's CPU cores;
- that a run stopped after a checkpoint and resumed on the GPU ends with the adapter of an
  uninterrupted run (the largest absolute difference is reported, not assumed zero).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from bench.finetune import MAX_LEN, PLANNED_STEPS, examples_per_trainer_step, trainer_baseline
from bench.harness import Comparison, format_table, run_comparison, write_json

PART_BYTES = 48 * 2**20  # a device call carries at most 64 MiB


def prepare(folder: Path) -> None:
    from bench.finetune import sft_chats
    from datacreek_assets.finetune.base_model import smollm2_from_gguf, smollm2_gguf
    from datacreek_assets.finetune.packing import encode

    folder.mkdir(parents=True, exist_ok=True)
    gguf = smollm2_gguf()
    model, tokenizer = smollm2_from_gguf(gguf)
    tokenizer.save_pretrained(folder / "tokenizer")
    model.config.save_pretrained(folder / "smollm2-config")  # bench.finetune_scale's random-weight base
    chats = sft_chats(96)
    examples = [e for e in (encode(tokenizer, c["messages"], MAX_LEN) for c in chats) if e is not None]
    (folder / "examples.json").write_text(json.dumps([[e.input_ids, e.labels] for e in examples]))
    data = gguf.read_bytes()
    for i in range(0, len(data), PART_BYTES):
        part = folder / f"gguf-part-{i // PART_BYTES}"
        part.mkdir(exist_ok=True)
        (part / "data").write_bytes(data[i:i + PART_BYTES])
    (folder / "gguf.json").write_text(json.dumps({"name": gguf.name, "bytes": len(data)}))
    print(f"{len(examples)} examples, GGUF {len(data) / 2**20:.1f} MiB in {-(-len(data) // PART_BYTES)} parts")


def _join_gguf(folder: Path, parts: list[Path]) -> Path:
    meta = json.loads((folder / "gguf.json").read_text())
    target = Path(tempfile.mkdtemp(prefix="gguf-")) / meta["name"]
    with target.open("wb") as out:
        for part in sorted(parts, key=lambda p: int(p.parent.name.rsplit("-", 1)[1])):
            out.write(part.read_bytes())
    if target.stat().st_size != meta["bytes"]:
        raise SystemExit(f"GGUF parts add up to {target.stat().st_size} bytes, expected {meta['bytes']}")
    return target


def run(folder: Path, out: Path, parts: list[Path], accelerator: str = "cuda", limit: int | None = None) -> int:
    """``accelerator`` and ``limit`` (examples) exist for a quick smoke run of this script without a GPU."""
    import torch

    from datacreek_assets.finetune.base_model import smollm2_from_gguf
    from datacreek_assets.finetune.packing import Example, pack
    from datacreek_assets.finetune.training import PeakMemory, TrainConfig, precision_of, train_lora, wrap_lora

    if accelerator == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this benchmark compares GPU training and needs one", file=sys.stderr)
        return 3
    from transformers import AutoTokenizer

    base, _ = smollm2_from_gguf(_join_gguf(folder, parts))
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    examples = [Example(ids, labels) for ids, labels in json.loads((folder / "examples.json").read_text())][:limit]
    rows = pack(examples, MAX_LEN)
    real_tokens = sum(len(e.input_ids) for e in examples)
    # `config` is the shipped default precision; bf16 autocast is measured against fp32 explicitly
    config = TrainConfig(effective_batch=max(1, len(rows) // PLANNED_STEPS), max_seq_len=MAX_LEN, learning_rate=1e-3,
                         checkpoint_every=10_000, eval_every=10_000, memory_budget_mb=8192)
    fp32 = dataclasses.replace(config, gpu_precision="fp32")
    bf16 = dataclasses.replace(config, gpu_precision="bf16")
    steps = math.ceil(len(rows) / config.effective_batch)  # the loop's optimizer steps (rounding adds one)
    cpu_threads = os.cpu_count() or 1
    torch.set_num_threads(cpu_threads)

    def fresh_model():  # wrap_lora changes its model in place: every run gets its own copy of the base
        torch.manual_seed(config.seed)  # as the pipeline does: the same LoRA initialisation every run
        return wrap_lora(copy.deepcopy(base), config)

    probe_dir = Path(tempfile.mkdtemp(prefix="probes-"))
    peaks, results = {}, {}

    def loop_on(device: str, config=config, out_dir: Path | None = None, on_step=None):
        label = f"{device}-{precision_of(device, False, config)}"
        model = fresh_model()
        try:
            with PeakMemory(device) as peak:
                target = out_dir or Path(tempfile.mkdtemp(prefix="train-"))
                result = train_lora(model, tokenizer.pad_token_id, rows, [], config, target, device=device,
                                    on_step=on_step, probe_cache=probe_dir / f"{label}.json")
            peaks.setdefault(label, []).append(peak.peak / 2**20)
            results[label] = result
            return result
        finally:
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def loop(device: str, config: TrainConfig):
        def timed() -> int:
            loop_on(device, config)
            return real_tokens
        return timed

    def trainer_accel() -> int:
        model = fresh_model()
        with PeakMemory(accelerator) as peak:
            trainer_baseline(model, tokenizer, examples, config, use_cpu=accelerator == "cpu")
        peaks.setdefault("trainer", []).append(peak.peak / 2**20)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return real_tokens

    # untimed warm-ups: CUDA context and kernels, and each side's micro-batch probe
    for device, warm in ((accelerator, bf16), (accelerator, fp32), ("cpu", config)):
        loop_on(device, dataclasses.replace(warm, max_steps=1))
    gpu = torch.cuda.get_device_name(0) if accelerator == "cuda" else accelerator
    shipped = f"{accelerator}-{precision_of(accelerator, False, config)}"
    padded = sum(len(r.input_ids) for r in rows)
    common = (f"{len(examples)} examples, {real_tokens} real tokens, {len(rows)} packed rows "
              f"({padded / (len(rows) * MAX_LEN):.0%} full), loop {steps} optimizer steps of {config.effective_batch} rows")

    def side(label: str) -> str:
        r = results[label]
        return (f"{label}: micro-batch {r.micro_batch} x {r.accumulation}, peak memory {max(peaks[label]):.0f} MiB, "
                f"last step loss {r.losses[-1][1]:.4f}")

    comparisons = [
        Comparison(f"LoRA training tokens/s (SmolLM2-135M, loop vs Trainer, both fp32 on {gpu})",
                   loop(accelerator, fp32), trainer_accel, unit="tokens", repeats=3,
                   notes=lambda: (f"{common}, Trainer steps of {examples_per_trainer_step(examples)} examples; "
                                  f"{side(f'{accelerator}-fp32')}; Trainer peak memory {max(peaks['trainer']):.0f} MiB")),
        Comparison(f"LoRA training tokens/s (asset loop on {gpu}, bf16 autocast vs fp32)",
                   loop(accelerator, bf16), loop(accelerator, fp32), unit="tokens", repeats=3,
                   notes=lambda: f"{common}; {side(f'{accelerator}-bf16')}; {side(f'{accelerator}-fp32')}"),
        Comparison(f"LoRA training tokens/s (asset loop as shipped, {gpu} vs {cpu_threads} CPU threads)",
                   loop(accelerator, config), loop("cpu", config), unit="tokens", repeats=1,
                   notes=lambda: f"{common}; {side(shipped)}; {side('cpu-fp32')}"),
    ]
    measured = [run_comparison(c, progress=lambda m: print(m, file=sys.stderr)) for c in comparisons]

    # resume on the accelerator, as shipped: a run stopped after step 2 (as a quota stop does: the
    # step is checkpointed, then the error propagates) and resumed in a fresh model, against one
    # uninterrupted run
    straight_dir, resumed_dir = Path(tempfile.mkdtemp(prefix="straight-")), Path(tempfile.mkdtemp(prefix="resumed-"))
    straight, _ = _adapter_after(loop_on, accelerator, config, straight_dir)
    try:
        loop_on(accelerator, config, resumed_dir, on_step=_stop_after(2))
        raise SystemExit("the stop after step 2 did not stop the run")
    except _Stopped:
        pass
    resumed, resumed_result = _adapter_after(loop_on, accelerator, config, resumed_dir)
    max_diff = max(float((straight[k] - resumed[k]).abs().max()) for k in straight)
    summary = {
        "gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda,
        "transformers": _version("transformers"), "peft": _version("peft"), "cpu_threads": cpu_threads,
        "results": [r.__dict__ for r in measured],
        "resume": {"precision": shipped, "resumed_from_step": resumed_result.resumed_from,
                   "steps": resumed_result.steps, "adapter_tensors": len(straight), "max_abs_diff": max_diff},
        "step_losses": {label: r.losses for label, r in results.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "finetune_gpu.json").write_text(json.dumps(summary, indent=1, default=str))
    write_json(measured, out / "finetune_gpu_results.json")
    print(format_table(measured))
    for r in measured:
        print(f"  {r.name}: {r.notes}")
    print(f"resume ({shipped}): stopped after step {resumed_result.resumed_from} of {resumed_result.steps}, "
          f"resumed in a fresh model; largest |difference| from an uninterrupted run over "
          f"{len(straight)} adapter tensors: {max_diff:.3g}")
    for label, r in results.items():
        print(f"{label} step losses: {[round(loss, 4) for _, loss in r.losses]}")
    return 0


class _Stopped(Exception):
    pass


def _stop_after(step: int):
    def on_step(done: int, loss: float) -> None:
        if done == step:
            raise _Stopped(step)
    return on_step


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _adapter_after(loop_on, device: str, config, out_dir: Path):
    from safetensors.torch import load_file

    result = loop_on(device, config, out_dir)
    return load_file(Path(result.adapter_dir) / "adapter_model.safetensors"), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.finetune_gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="tokenize the SFT rows and split the base GGUF (run where the venv is)")
    p.add_argument("folder", type=Path)
    r = sub.add_parser("run", help="train and compare on the GPU machine")
    r.add_argument("folder", type=Path, help="what `prepare` wrote (the GGUF parts may live elsewhere)")
    r.add_argument("out", type=Path, help="where the JSON results go")
    r.add_argument("--parts", type=Path, nargs="+", help="GGUF part files (default: FOLDER/gguf-part-*/data)")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.folder)
        return 0
    parts = args.parts or sorted(args.folder.glob("gguf-part-*/data"))
    return run(args.folder, args.out, parts)


if __name__ == "__main__":
    sys.exit(main())
