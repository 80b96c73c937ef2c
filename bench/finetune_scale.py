"""LoRA training at scale: model FLOPs utilisation on a GPU, `accelerate launch` with DeepSpeed
ZeRO-3, and a 4x effective batch through accumulation at unchanged peak memory.

    python -m bench.finetune_scale mfu DIR OUT          # GPU: the loop's MFU, fp32 / bf16 / bf16 + compile
    python -m bench.finetune_scale zero3 DIR OUT        # GPU: ZeRO-3 launch, stop + resume, 4x batch memory
    python -m bench.finetune_scale accumulation [--device cpu]   # 4x batch at the same micro-batch: peak RSS
    python -m bench.finetune_scale grounded DIR CHATS OUT  # GPU: adapters on the demo's grounded SFT records

DIR is what ``python -m bench.finetune_gpu prepare DIR`` writes (tokenized demo SFT examples,
the tokenizer, SmolLM2's configuration). Without the base GGUF's parts in DIR, ``mfu`` and
``zero3`` build SmolLM2-135M's architecture with random weights: throughput, memory and the
launch's mechanics do not depend on the weights' values, and the loss curves compared are
each variant's on the same data from the same start.

MFU counts the FLOPs a step needs, not what the kernels happen to do: a frozen weight needs its
forward (2 FLOPs per weight and token) and the gradient of its input (2 more), LoRA's own
weights also their weight gradients, attention only within each packed example (causal), and
the output head only at labelled positions. Padding and masked attention count nothing. The
peak is the H100/H200 SXM datasheet's dense bf16 rate (989 TFLOP/s); the run also measures an
8192^3 bf16 matrix product for reference.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

DATASHEET_BF16_TFLOPS = 989.0
SEQ_LEN = 1024  # the asset's default max_seq_len


def lora_step_flops(rows, model_config, lora_rank: int, targets: tuple[str, ...]) -> float:
    """The FLOPs a LoRA training step over ``rows`` needs (see the module's docstring)."""
    h, f = model_config.hidden_size, model_config.intermediate_size
    heads, kv = model_config.num_attention_heads, model_config.num_key_value_heads
    head_dim = h // heads
    shapes = {"q_proj": (h, heads * head_dim), "k_proj": (h, kv * head_dim), "v_proj": (h, kv * head_dim),
              "o_proj": (heads * head_dim, h), "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}
    layers = model_config.num_hidden_layers
    frozen = sum(i * o for i, o in shapes.values()) * layers
    lora = sum(lora_rank * (shapes[t][0] + shapes[t][1]) for t in targets) * layers
    total = 0.0
    for row in rows:
        tokens = len(row.input_ids)
        total += tokens * (4 * frozen + 6 * lora)
        lengths = _segment_lengths(row.segments)
        total += sum(6 * s * s * heads * head_dim * layers for s in lengths)
        total += row.label_tokens * 4 * h * model_config.vocab_size
    return total


def _segment_lengths(segments: list[int]) -> list[int]:
    counts: dict[int, int] = {}
    for s in segments:
        counts[s] = counts.get(s, 0) + 1
    return list(counts.values())


def matmul_tflops() -> float:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (start.elapsed_time(end) / 1000) / 1e12


def base_model(folder: Path, workdir: Path) -> tuple[Path, str]:
    """A saved base directory (model + tokenizer) for load_base: SmolLM2 from the GGUF parts when
    they were sent, else SmolLM2's architecture with random weights."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    target = workdir / "base"
    if (target / "config.json").exists():
        return target, json.loads((target / "origin.json").read_text())["origin"]
    parts = sorted(folder.glob("gguf-part-*/data"))
    meta = json.loads((folder / "gguf.json").read_text()) if (folder / "gguf.json").exists() else None
    if meta and sum(p.stat().st_size for p in parts) == meta["bytes"]:
        from bench.finetune_gpu import _join_gguf
        from datacreek_assets.finetune.base_model import smollm2_from_gguf

        model, tokenizer = smollm2_from_gguf(_join_gguf(folder, parts))
        origin = "SmolLM2-135M-Instruct (dequantized Q4_1 GGUF)"
    else:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig.from_pretrained(folder / "smollm2-config")).float()
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        origin = "SmolLM2-135M architecture, random weights"
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (target / "origin.json").write_text(json.dumps({"origin": origin}))
    return target, origin


def demo_rows(folder: Path, copies: int, seq_len: int = SEQ_LEN):
    """The demo tenant's tokenized SFT examples, ``copies`` times over, packed into rows."""
    from datacreek_assets.finetune.packing import Example, pack

    examples = [Example(ids, labels) for ids, labels in json.loads((folder / "examples.json").read_text())]
    return pack(examples * copies, seq_len)


def mfu(folder: Path, out: Path, rows_per_step: int = 64, steps: int = 6, rounds: int = 3) -> dict:
    """The loop's tokens/s and MFU: fp32 (the shipped default), bf16 autocast, bf16 + compiled layers.
    Each variant trains ``steps`` optimizer steps of ``rows_per_step`` packed rows from the same
    LoRA start; round 1 is a warm-up (CUDA kernels, compilation), the rest are timed, alternating."""
    import torch
    from transformers import AutoConfig

    from datacreek_assets.finetune.base_model import load_base
    from datacreek_assets.finetune.training import TrainConfig, train_lora, wrap_lora

    workdir = Path(tempfile.mkdtemp(prefix="mfu-"))
    base_dir, origin = base_model(folder, workdir)
    model_config = AutoConfig.from_pretrained(base_dir)
    rows = demo_rows(folder, 1)
    rows = (rows * (1 + rows_per_step * steps // len(rows)))[:rows_per_step * steps]
    base, tokenizer = load_base(base_dir)
    shipped = TrainConfig(effective_batch=rows_per_step, max_seq_len=SEQ_LEN, epochs=1, checkpoint_every=10**6,
                          eval_every=10**6, memory_budget_mb=60_000, learning_rate=1e-3)
    variants = {"fp32": shipped, "bf16": dataclasses.replace(shipped, gpu_precision="bf16"),
                "bf16+compile": dataclasses.replace(shipped, gpu_precision="bf16", compile_layers=True)}
    step_flops = [lora_step_flops(rows[i * rows_per_step:(i + 1) * rows_per_step], model_config,
                                  shipped.lora_rank, shipped.target_modules) for i in range(steps)]
    real_tokens = sum(len(r.input_ids) for r in rows)
    measured: dict[str, list[dict]] = {name: [] for name in variants}
    for round_ in range(rounds):
        for name, config in variants.items():
            torch.manual_seed(config.seed)
            model = wrap_lora(copy.deepcopy(base), config)
            torch.cuda.synchronize()
            result = train_lora(model, tokenizer.pad_token_id, rows, [], config,
                                Path(tempfile.mkdtemp(prefix=f"mfu-{name}-")), device="cuda")
            torch.cuda.synchronize()
            run = {"round": round_, "tokens_per_s": real_tokens / result.train_seconds,
                   "tflops": sum(step_flops) / result.train_seconds / 1e12, "micro_batch": result.micro_batch,
                   "accumulation": result.accumulation, "peak_memory_mb": result.peak_memory_mb,
                   "losses": [loss for _, loss in result.losses], "seconds": result.train_seconds}
            measured[name].append(run)
            print(f"round {round_} {name}: {run['tokens_per_s']:,.0f} tokens/s, {run['tflops']:.1f} TFLOP/s, "
                  f"micro-batch {result.micro_batch} x {result.accumulation}, {result.train_seconds:.2f} s",
                  file=sys.stderr, flush=True)
            del model
            torch.cuda.empty_cache()
    reference = statistics.median(r["losses"][-1] for r in measured["fp32"][1:])
    summary = {"base": origin, "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "rows_per_step": rows_per_step, "steps": steps, "seq_len": SEQ_LEN, "real_tokens": real_tokens,
               "model_tflop_per_step": [f / 1e12 for f in step_flops], "matmul_tflops": matmul_tflops(),
               "variants": {}}
    for name, runs in measured.items():
        timed = runs[1:]
        tps = [r["tokens_per_s"] for r in timed]
        tflops = statistics.median(r["tflops"] for r in timed)
        fp32_losses = measured["fp32"][-1]["losses"]
        summary["variants"][name] = {
            "tokens_per_s_median": statistics.median(tps), "tokens_per_s_range": [min(tps), max(tps)],
            "tflops_median": tflops, "mfu_datasheet": tflops / DATASHEET_BF16_TFLOPS,
            "mfu_measured_matmul": tflops / summary["matmul_tflops"],
            "micro_batch": timed[-1]["micro_batch"], "accumulation": timed[-1]["accumulation"],
            "peak_memory_mb": max(r["peak_memory_mb"] for r in runs),
            "losses": timed[-1]["losses"], "last_loss_vs_fp32": timed[-1]["losses"][-1] - reference,
            "max_step_loss_gap_vs_fp32": max(abs(a - b) for a, b in zip(timed[-1]["losses"], fp32_losses)),
            "fp32_round_to_round_gap": max(abs(a - b) for a, b in zip(measured["fp32"][1]["losses"], fp32_losses)),
        }
    out.mkdir(parents=True, exist_ok=True)
    (out / "mfu.json").write_text(json.dumps(summary, indent=1))
    print(f"\nLoRA loop MFU on {summary['gpu']} ({origin}), {steps} steps of {rows_per_step} rows x {SEQ_LEN}; "
          f"bf16 matmul measured {summary['matmul_tflops']:.0f} TFLOP/s")
    print("| variant | tokens/s (median, range) | model TFLOP/s | MFU (989) | micro x accum | peak MiB | "
          "last loss | max step-loss gap to fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, v in summary["variants"].items():
        print(f"| {name} | {v['tokens_per_s_median']:,.0f} ({v['tokens_per_s_range'][0]:,.0f}-"
              f"{v['tokens_per_s_range'][1]:,.0f}) | {v['tflops_median']:.1f} | {v['mfu_datasheet']:.1%} | "
              f"{v['micro_batch']} x {v['accumulation']} | {v['peak_memory_mb']:,.0f} | {v['losses'][-1]:.4f} | "
              f"{v['max_step_loss_gap_vs_fp32']:.4f} |")
    print(f"fp32 itself, round to round: max step-loss gap {summary['variants']['fp32']['fp32_round_to_round_gap']:.2e}")
    return summary


def accumulation(device: str, base_dir: Path | None, folder: Path | None, micro: int = 1, steps: int = 2,
                 launched: bool = False) -> dict:
    """The same micro-batch at effective batch ``micro`` and 4x ``micro``: peak memory of each and the
    tokens each step saw. On CUDA the allocator's peak above the loop's start; on CPU each run is a
    fresh process and its peak RSS is the kernel's (ru_maxrss), since freed memory a process keeps
    hides a later run's growth from a sampled RSS."""
    import torch

    from datacreek_assets.finetune.base_model import SMOLLM2, base_model_dir, load_base
    from datacreek_assets.finetune.training import TrainConfig, train_lora, wrap_lora

    if base_dir is None:
        base_dir = base_model_dir(SMOLLM2, Path(tempfile.gettempdir()) / "datacreek-bench-base")
    if folder is not None:
        rows = demo_rows(folder, 8)
    else:
        from bench.finetune import MAX_LEN, sft_chats
        from datacreek_assets.finetune.packing import encode, pack

        _, tokenizer = load_base(base_dir)
        chats = sft_chats(400)
        rows = pack([e for e in (encode(tokenizer, c["messages"], MAX_LEN) for c in chats) if e], SEQ_LEN)
    rows = rows[:4 * micro * steps]
    results = {}
    # launched on a GPU: DeepSpeed in bf16, and the budget is measured the way its probe measures
    precision = "bf16" if launched and device == "cuda" else "fp32"
    # the micro-batch fixed by memory (as a tenant's budget fixes it), not by the CPU's timing
    common = TrainConfig(max_steps=steps, checkpoint_every=10**6, eval_every=10**6, max_seq_len=SEQ_LEN,
                         gpu_precision=precision, micro_batch_by_speed=False)
    if device == "cpu" and not launched:
        return _accumulation_in_processes(base_dir, rows, common, micro)
    budget = _budget_for(micro, device, base_dir, rows, common)
    # the 4x run first: it cannot profit from memory the 1x run's allocator already holds
    for factor in (4, 1):
        config = dataclasses.replace(common, effective_batch=micro * factor, memory_budget_mb=budget)
        out_dir = Path(tempfile.mkdtemp(prefix=f"accum-{factor}x-"))
        if launched:
            from datacreek_assets.finetune.launch import run_launched, write_job
            from datacreek_assets.finetune.training import plan_device

            plan = plan_device(1 if device == "cuda" else 0, "fp32", "accelerate")
            _, tokenizer = load_base(base_dir)
            write_job(out_dir / "launch", base_dir, out_dir, config, tokenizer.pad_token_id, rows, [], threads=2)
            result = run_launched(plan, config, out_dir / "launch")
        else:
            model, tokenizer = load_base(base_dir)
            torch.manual_seed(config.seed)
            result = train_lora(wrap_lora(model, config), tokenizer.pad_token_id, rows, [], config, out_dir,
                                device=device)
            del model
        results[f"{factor}x"] = {"effective_batch": config.effective_batch, "micro_batch": result.micro_batch,
                                 "accumulation": result.accumulation, "peak_memory_mb": result.peak_memory_mb,
                                 "tokens_per_step": result.train_tokens / result.steps}
        print(f"{factor}x: effective batch {config.effective_batch} = micro-batch {result.micro_batch} x "
              f"{result.accumulation}, {result.train_tokens / result.steps:,.0f} tokens per step, peak "
              f"{'RSS' if device == 'cpu' else 'memory'} +{result.peak_memory_mb:,.1f} MiB", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    one, four = results["1x"]["peak_memory_mb"], results["4x"]["peak_memory_mb"]
    results["delta_mb"] = four - one
    print(f"4x effective batch through accumulation: peak {four:,.1f} against {one:,.1f} MiB "
          f"(delta {four - one:+,.1f} MiB, {(four - one) / max(one, 1e-9):+.1%})")
    return results


def _accumulation_in_processes(base_dir: Path, rows, common, micro: int) -> dict:
    import multiprocessing
    import os

    # glibc serves large blocks from its heap once a freed mapping raised its threshold, and keeps
    # them: RSS then tracks how fragmented the heap got, not what was live. A fixed threshold maps
    # every block over 128 KiB and unmaps it on free, so each process's peak RSS is its live peak.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    results = {}
    for factor in (4, 1):
        # the 1x run takes 4x the steps: both run the same micro-batches over the same rows, so the
        # heap has been through as many forward and backward passes when its peak is read
        config = dataclasses.replace(common, effective_batch=micro * factor, max_steps=common.max_steps * 4 // factor)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            run = pool.apply(_cpu_run, (str(base_dir), rows, dataclasses.asdict(config), micro))
        results[f"{factor}x"] = run
        print(f"{factor}x: effective batch {config.effective_batch} = micro-batch {run['micro_batch']} x "
              f"{run['accumulation']}, {run['tokens_per_step']:,.0f} tokens per step, peak RSS "
              f"{run['peak_rss_mb']:,.0f} MiB ({run['rss_after_load_mb']:,.0f} MiB after loading the base)", flush=True)
    one, four = results["1x"]["peak_rss_mb"], results["4x"]["peak_rss_mb"]
    results["delta_mb"] = four - one
    print(f"4x effective batch through accumulation: peak RSS {four:,.0f} against {one:,.0f} MiB "
          f"(delta {four - one:+,.0f} MiB, {(four - one) / one:+.1%})")
    return results


def _cpu_run(base_dir: str, rows, config: dict, micro: int) -> dict:
    """One CPU training in this (fresh) process; its micro-batch pinned through the probe cache,
    as a measured memory budget pins it."""
    import resource

    import torch

    from datacreek_assets.finetune.base_model import load_base
    from datacreek_assets.finetune.training import TrainConfig, train_lora, wrap_lora

    torch.set_num_threads(2)
    config = TrainConfig(**{**config, "target_modules": tuple(config["target_modules"]), "memory_budget_mb": 2})
    model, tokenizer = load_base(Path(base_dir))
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    work = Path(tempfile.mkdtemp(prefix="accum-cpu-"))
    sizes = [m for m in range(1, config.effective_batch + 1) if config.effective_batch % m == 0]
    (work / "probe.json").write_text(json.dumps({str(m): {"peak_mb": 1 if m <= micro else 10**9, "tokens_per_s": None}
                                                 for m in sizes}))
    torch.manual_seed(config.seed)
    result = train_lora(wrap_lora(model, config), tokenizer.pad_token_id, rows, [], config, work / "run",
                        probe_cache=work / "probe.json")
    return {"effective_batch": config.effective_batch, "micro_batch": result.micro_batch,
            "accumulation": result.accumulation, "tokens_per_step": result.train_tokens / result.steps,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_after_load_mb": loaded}


def _budget_for(micro: int, device: str, base_dir: Path, rows, config) -> int:
    """A memory budget that admits ``micro`` rows per micro-batch and not twice as many, so both
    runs get the same micro-batch from the loop's own probe (as a tenant's budget would fix it)."""
    import torch

    from datacreek_assets.finetune.base_model import load_base
    from datacreek_assets.finetune.training import probe_micro_batch, wrap_lora

    model, tokenizer = load_base(base_dir)
    model = wrap_lora(model, config).to(device)
    peaks = {m: probe_micro_batch(model, rows, m, tokenizer.pad_token_id, device, config)[0] for m in (micro, 2 * micro)}
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return int((peaks[micro] + peaks[2 * micro]) / 2)


def zero3(folder: Path, out: Path, steps: int = 10) -> dict:
    """`accelerate launch` + DeepSpeed ZeRO-3 on this machine's GPUs: a straight run, a run stopped
    at its first reported step (as the credit meter stops one; the launch stops at the step boundary
    where it reads the request) and resumed, and the 4x batch's peak memory."""
    import torch
    from safetensors.torch import load_file

    from datacreek_assets.finetune.base_model import load_base
    from datacreek_assets.finetune.launch import run_launched, write_job
    from datacreek_assets.finetune.training import TrainConfig, plan_device

    workdir = Path(tempfile.mkdtemp(prefix="zero3-"))
    base_dir, origin = base_model(folder, workdir)
    _, tokenizer = load_base(base_dir)
    rows = demo_rows(folder, 8)
    plan = plan_device(torch.cuda.device_count(), "fp32", "accelerate")
    config = TrainConfig(effective_batch=8, epochs=1000, max_steps=steps, checkpoint_every=5, eval_every=5,
                         memory_budget_mb=60_000, gpu_precision="bf16", learning_rate=1e-3)
    val = rows[:4]

    def launch(name: str, on_step=None, stop_first: bool = False):
        target = workdir / name
        write_job(target / "launch", base_dir, target, config, tokenizer.pad_token_id, rows, val, threads=4)
        if stop_first:  # the request a raising on_step writes, ahead: the launch stops at step 1
            (target / "launch" / "stop").touch()
        began = time.perf_counter()
        result = run_launched(plan, config, target / "launch", on_step=on_step)
        print(f"{name}: {time.perf_counter() - began:.1f} s launch to result, {result.tokens_per_s:,.0f} tokens/s "
              f"in the loop, micro-batch {result.micro_batch} x {result.accumulation}, peak "
              f"+{result.peak_memory_mb:,.0f} MiB, losses {[round(x, 4) for _, x in result.losses]}",
              file=sys.stderr, flush=True)
        return result, load_file(Path(result.adapter_dir) / "adapter_model.safetensors")

    class Quota(Exception):
        pass

    def out_of_credits(step: int, loss: float) -> None:
        raise Quota(step)

    straight, straight_adapter = launch("straight")
    try:
        launch("resumed", on_step=out_of_credits, stop_first=True)
        raise SystemExit("the stop did not stop the launch")
    except Quota:
        pass
    stopped_at = sorted((workdir / "resumed" / "checkpoints").glob("step-*"))[-1].name
    resumed, resumed_adapter = launch("resumed")
    diff = max(float((straight_adapter[k].float() - resumed_adapter[k].float()).abs().max()) for k in straight_adapter)
    scale = max(float(v.float().abs().max()) for v in straight_adapter.values())
    log = (workdir / "straight" / "launch" / "launch.log").read_text(errors="replace")
    summary = {"base": origin, "gpus": torch.cuda.device_count(), "billed_gpus": plan.gpus,
               "processes": plan.processes, "plan": plan.reason, "deepspeed_in_log": "DeepSpeed" in log,
               "zero_stage_3_in_log": '"stage": 3' in log or "stage 3" in log.lower(),
               "straight": {"losses": straight.losses, "val_losses": straight.val_losses,
                            "peak_memory_mb": straight.peak_memory_mb, "tokens_per_s": straight.tokens_per_s},
               "resume": {"stopped_checkpoint": stopped_at, "resumed_from": resumed.resumed_from,
                          "losses": resumed.losses, "adapter_max_abs_diff": diff, "adapter_max_abs": scale,
                          "tensors": len(straight_adapter)}}
    print(f"resume: stopped with checkpoint {stopped_at}, resumed from step {resumed.resumed_from}; largest |adapter "
          f"difference| from the straight run {diff:.3g} (largest |weight| {scale:.3g}, {len(straight_adapter)} tensors)")
    summary["accumulation"] = accumulation("cuda", base_dir, folder, micro=8, steps=2, launched=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "zero3.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "zero3_launch.log").write_text(log[-200_000:])
    return summary


GROUNDED_VARIANTS = {  # name: (epochs, learning rate); the asset's default is 1 epoch at 3e-3
    "e4-lr2e-3": (4, 2e-3), "e8-lr1e-3": (8, 1e-3), "e16-lr1e-3": (16, 1e-3)}


def grounded(folder: Path, chats_dir: Path, out: Path) -> dict:
    """Adapters trained on the demo tenant's grounded SFT records (``bench.qa_offline prepare``
    writes train_chats.json and val_chats.json) for more epochs than a CPU affords, on the real
    SmolLM2 base, each written to OUT/<variant>/ for ``bench.qa_offline eval`` to score."""
    import shutil

    import torch

    from datacreek_assets.finetune.base_model import load_base
    from datacreek_assets.finetune.pipeline import rows_for
    from datacreek_assets.finetune.training import TrainConfig, train_lora, wrap_lora

    workdir = Path(tempfile.mkdtemp(prefix="grounded-"))
    base_dir, origin = base_model(folder, workdir)
    if "random" in origin:
        raise SystemExit("grounded training needs the real base: send the GGUF parts")
    base, tokenizer = load_base(base_dir)
    train = json.loads((chats_dir / "train_chats.json").read_text())
    val = json.loads((chats_dir / "val_chats.json").read_text())
    defaults = TrainConfig()
    train_rows, dropped = rows_for(tokenizer, train, defaults.max_seq_len)
    val_rows, _ = rows_for(tokenizer, val, defaults.max_seq_len)
    summary = {"base": origin, "train_records": len(train), "dropped_too_long": dropped, "train_rows": len(train_rows),
               "val_rows": len(val_rows), "variants": {}}
    for name, (epochs, lr) in GROUNDED_VARIANTS.items():
        config = dataclasses.replace(defaults, epochs=epochs, learning_rate=lr, gpu_precision="bf16",
                                     memory_budget_mb=60_000, checkpoint_every=10**6, eval_every=10)
        torch.manual_seed(config.seed)
        model = wrap_lora(copy.deepcopy(base), config)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        result = train_lora(model, pad, train_rows, val_rows, config, workdir / name, device="cuda")
        target = out / name
        target.mkdir(parents=True, exist_ok=True)
        for file in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy(Path(result.adapter_dir) / file, target / file)
        summary["variants"][name] = {"epochs": epochs, "learning_rate": lr, "steps": result.steps,
                                     "tokens_per_s": result.tokens_per_s, "train_losses": result.losses,
                                     "val_losses": result.val_losses}
        print(f"{name}: {result.steps} steps, {result.tokens_per_s:,.0f} tokens/s, val loss "
              f"{[round(v, 3) for _, v in result.val_losses]}", flush=True)
        del model
        torch.cuda.empty_cache()
    (out / "grounded.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.finetune_scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("mfu", "zero3"):
        p = sub.add_parser(name, help=f"{name} on this machine's GPU")
        p.add_argument("folder", type=Path, help="what `python -m bench.finetune_gpu prepare` wrote")
        p.add_argument("out", type=Path, help="where the JSON results go")
    g = sub.add_parser("grounded", help="adapters on the demo's grounded SFT records, on this machine's GPU")
    g.add_argument("folder", type=Path, help="what `python -m bench.finetune_gpu prepare` wrote, with the GGUF parts")
    g.add_argument("chats", type=Path, help="what `python -m bench.qa_offline prepare` wrote")
    g.add_argument("out", type=Path, help="where the adapters and the JSON results go")
    a = sub.add_parser("accumulation", help="a 4x effective batch through accumulation: peak memory")
    a.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    if args.command != "accumulation":
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: this benchmark needs one", file=sys.stderr)
            return 3
    if args.command == "mfu":
        mfu(args.folder, args.out)
    elif args.command == "zero3":
        zero3(args.folder, args.out)
    elif args.command == "grounded":
        grounded(args.folder, args.chats, args.out)
    else:
        import torch

        torch.set_num_threads(2)
        accumulation(args.device, None, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
