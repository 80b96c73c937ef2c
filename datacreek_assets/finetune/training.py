"""LoRA fine-tuning loop: packed rows, measured micro-batch, gradient accumulation, resumable.

One optimizer step sees ``effective_batch`` packed rows. The micro-batch is a
divisor of the effective batch whose forward+backward peak memory, measured on
the longest rows, fits the budget: for eager steps on a CPU the largest within
5 % of the fastest per real token (timed, less the padding), the largest
otherwise; accumulation makes up the rest. A step's rows go into micro-batches
longest first, so that each is padded little.
The loss of a step is the sum of token losses divided by the label tokens of the
whole step, so accumulating micro-batches computes the same gradient as one big
batch. Checkpoints (adapter, optimizer, scheduler, history) are written every
``checkpoint_every`` steps by rename; a killed run restarts from the newest one
and, since data order is a pure function of (seed, epoch), ends with the same
weights as a run that was never interrupted.
"""

from __future__ import annotations

import contextvars
import functools
import json
import math
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from datacreek_assets.finetune.packing import IGNORE, PackedRow, collate
from datacreek_assets.settings import CPU_FALLBACKS, LAUNCHERS

ACCELERATE_ZERO3 = Path(__file__).with_name("accelerate_zero3.yaml")
ACCELERATE_CPU = Path(__file__).with_name("accelerate_cpu.yaml")
GPU_PRECISIONS = ("fp32", "bf16")
CPU_PRECISIONS = ("fp32", "bf16")
MAX_AVERAGE_SEEDS = 8  # an averaged release costs this many trainings at most
# Whoever shows a training live (runner.materialize_tenant, for the CLI's progress bar) sets this in
# the context the run executes in; it gets (step, total steps, loss) after every optimizer step.
STEP_OBSERVER: contextvars.ContextVar[Callable[[int, int, float], None] | None] = contextvars.ContextVar(
    "datacreek_training_step_observer", default=None)


@dataclass
class TrainConfig:
    """Training settings; these defaults are also the `finetuned_adapter` asset's run-config defaults."""

    learning_rate: float = 3e-3  # demo tenant, 1 epoch: val loss 2.50 at 1e-3, 2.24 at 3e-3
    epochs: int = 1
    max_steps: int = 0  # 0: no cap beyond epochs
    lora_rank: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    effective_batch: int = 8
    max_seq_len: int = 1024  # a grounded record: three retrieved passages (~800 tokens), the question, the answer
    memory_budget_mb: int = 3072
    checkpoint_every: int = 10
    eval_every: int = 10
    seed: int = 0
    # On CUDA: "fp32", or "bf16" to run forward passes under bfloat16 autocast (LoRA weights,
    # gradients and optimizer stay fp32). On demo-sized runs at the 3 GiB budget bf16 gave 0.8-0.9x
    # the tokens/s of fp32 (bench/finetune_gpu.py), so fp32 is the default; with 64-row steps it
    # gives 2.8x, and 5.3x with compile_layers (bench/finetune_scale.py mfu).
    # The precision a run computes in is part of its run key (pipeline.run_key's placement).
    gpu_precision: str = "fp32"
    # On CPU with an fp32 base (cpu_fallback "fp32", or the CPU accelerate launch): "fp32", or
    # "bf16" to run forward passes under bfloat16 autocast, used only where the CPU has AMX
    # (pipeline.effective_config). On AMX it gave 2.1x the loop's fp32 tokens/s, held-out loss
    # 1.316 against 1.301 after one epoch (bench/finetune.py); with AVX-512 BF16 alone 0.5x.
    # An int8 base computes in int8.
    cpu_precision: str = "fp32"
    # Compile each decoder layer with torch.compile (graphs shared by every layer), on CUDA or
    # CPU (its own widest kernels), with an fp32 base, not under `accelerate launch`
    # (pipeline.effective_config). It costs about 90 s of compilation per process on a GPU
    # machine, so it pays on long trainings only. On CPU it fuses the elementwise work and
    # autocast's casts around the matmuls. The micro-batch is probed eager, before compiling: the
    # compiled steps' memory and speed are not probed.
    compile_layers: bool = False
    # On CPU, eager: the micro-batch is the largest of the sizes that fit memory_budget_mb whose
    # tokens/s is within 5 % of the fastest: timed on full rows, times the share of an epoch's
    # positions that are real at that size (real_share). An A/B of whole fp32 epochs on an AMX CPU,
    # before micro_batches grouped rows by length: 2 rows 1.16x and 7 rows 1.12x the tokens/s of 14.
    # False, on a GPU, or with compile_layers: the largest that fits (the probe runs eager;
    # compiled bf16 ran 14 rows 1.11x faster than 7, which the eager timing ranked first).
    micro_batch_by_speed: bool = True
    # Train this many adapters, with seeds seed, seed + 1, ..., and release the mean of their weight
    # updates (pipeline.fine_tune, averaging.py). On the demo tenant 3 averaged adapters answered
    # 0.413 of the hand-written questions exactly, against 0.349-0.385 for each alone (README).
    # Each member costs a whole training.
    average_seeds: int = 1

    def __post_init__(self):
        if not 1 <= self.average_seeds <= MAX_AVERAGE_SEEDS:
            raise ValueError(f"average_seeds must be between 1 and {MAX_AVERAGE_SEEDS}, not {self.average_seeds}")
        if self.gpu_precision not in GPU_PRECISIONS:
            raise ValueError(f"gpu_precision must be one of {GPU_PRECISIONS}, not {self.gpu_precision!r}")
        if self.cpu_precision not in CPU_PRECISIONS:
            raise ValueError(f"cpu_precision must be one of {CPU_PRECISIONS}, not {self.cpu_precision!r}")


@dataclass
class DevicePlan:
    device: str  # "cuda" or "cpu"
    gpus: int  # GPUs the training occupies, and is billed for
    load_in_8bit: bool
    accelerate_config: str | None  # set when the training is started by `accelerate launch`
    reason: str
    processes: int = 1  # training processes (one per GPU under accelerate)

    @property
    def placement(self) -> str:
        """What a checkpoint was written by: a launched run's checkpoints are DeepSpeed's, per process count."""
        return f"accelerate{self.processes}" if self.accelerate_config else ""


def plan_device(gpus: int, cpu_fallback: str, launcher: str = "auto", deepspeed: bool | None = None) -> DevicePlan:
    """Where training runs. ``cpu_fallback`` is "int8" (base in 8-bit via bitsandbytes) or "fp32".
    ``deepspeed``: whether DeepSpeed is installed (looked up when None); the GPU launch needs it."""
    if cpu_fallback not in CPU_FALLBACKS:
        raise ValueError(f"cpu_fallback must be one of {', '.join(CPU_FALLBACKS)}, not {cpu_fallback!r}")
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}, not {launcher!r}")
    if gpus >= 1 and launcher != "torch" and deepspeed is None:
        import importlib.util

        deepspeed = importlib.util.find_spec("deepspeed") is not None
    if gpus > 1 and launcher != "torch" or gpus == 1 and launcher == "accelerate":
        if deepspeed:
            return DevicePlan("cuda", gpus, False, str(ACCELERATE_ZERO3),
                              f"{gpus} GPU(s): `accelerate launch`, one process per GPU, DeepSpeed ZeRO-3", gpus)
        if launcher == "accelerate":  # asked for explicitly: a configuration error, not a fallback
            raise ValueError("launcher 'accelerate' on GPUs needs DeepSpeed, which is not installed in this image")
    if gpus >= 1:
        note = ""
        if gpus > 1:
            note = " (launcher 'torch'" if launcher == "torch" else " (DeepSpeed is not installed"
            note += f": 1 of {gpus} GPUs)"
        return DevicePlan("cuda", 1, False, None, "one GPU: plain torch" + note)
    if launcher == "accelerate":  # DeepSpeed needs GPUs: the CPU launch runs the same loop without it
        return DevicePlan("cpu", 0, False, str(ACCELERATE_CPU), "no GPU: `accelerate launch` on CPU, base in fp32")
    return DevicePlan("cpu", 0, cpu_fallback == "int8", None, f"no GPU: CPU fallback, base in {cpu_fallback}")


def precision_of(device: str, load_in_8bit: bool, config: TrainConfig) -> str:
    """The precision a training computes in, as checkpoints and memory probes are keyed by it."""
    if load_in_8bit:
        return "int8"
    return config.gpu_precision if device == "cuda" else config.cpu_precision


def forward_precision(device: str, config: TrainConfig, accelerator=None):
    """The context a forward pass runs in: bfloat16 autocast (CUDA or CPU) when asked, none otherwise.
    Under `accelerate launch`, accelerate's own (DeepSpeed casts the model to bf16 itself)."""
    import contextlib

    import torch

    if accelerator is not None:
        return accelerator.autocast()
    if precision_of(device, False, config) == "bf16":
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def mask_dtype(device: str, config: TrainConfig):
    """The attention mask's dtype: the one attention computes in (half the bytes under bf16)."""
    import torch

    return torch.bfloat16 if precision_of(device, False, config) == "bf16" else torch.float32


SPEED_TOLERANCE = 0.05  # micro-batch sizes this close to the fastest measured count as fast: take the largest


def micro_batch_for(effective_batch: int, fits: Callable[[int], bool],
                    tokens_per_s: Callable[[int], float | None] | None = None) -> int:
    """A divisor of ``effective_batch`` for which ``fits(m)`` holds (probed smallest first, up to
    the first that does not fit): the largest, or, with ``tokens_per_s`` measured, the largest of
    those within SPEED_TOLERANCE of the fastest. On a CPU a smaller micro-batch can be faster per
    token (its activations stay in cache); on a GPU the largest that fits is."""
    if effective_batch < 1:
        raise ValueError("effective_batch must be at least 1")
    fitting = []
    for m in (d for d in range(1, effective_batch + 1) if effective_batch % d == 0):
        if not fits(m):
            break
        fitting.append(m)
    if not fitting:
        raise MemoryError("a single packed row does not fit the memory budget: raise it or lower max_seq_len")
    speeds = {m: tokens_per_s(m) for m in fitting} if tokens_per_s else {}
    if not speeds or None in speeds.values():
        return fitting[-1]
    fastest = max(speeds.values())
    return max(m for m, speed in speeds.items() if speed >= (1 - SPEED_TOLERANCE) * fastest)


def accumulation_steps(effective_batch: int, micro_batch: int) -> int:
    if micro_batch < 1 or effective_batch % micro_batch:
        raise ValueError(f"micro-batch {micro_batch} does not divide effective batch {effective_batch}")
    return effective_batch // micro_batch


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or sampled process RSS on CPU (bytes above start)."""

    def __init__(self, device: str):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            import psutil

            self._process = psutil.Process()
            self._start = self._process.memory_info().rss
            self._stop = threading.Event()
            self._max = self._start
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._max = max(self._max, self._process.memory_info().rss)
            self._stop.wait(0.002)

    def __exit__(self, *exc):
        if self.device == "cuda":
            import torch

            self.peak = torch.cuda.max_memory_allocated() - self._start
        else:
            self._stop.set()
            self._thread.join()
            self._max = max(self._max, self._process.memory_info().rss)
            self.peak = self._max - self._start
        return False


@dataclass
class TrainResult:
    adapter_dir: str
    steps: int
    micro_batch: int
    accumulation: int
    train_tokens: int
    train_seconds: float
    tokens_per_s: float
    peak_memory_mb: float
    probe_mb: dict[int, float]
    probe_tokens_per_s: dict[int, float | None] = field(default_factory=dict)  # measured on CPU only
    losses: list[tuple[int, float]] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    resumed_from: int = 0


def token_loss_sum(model, batch: dict):
    """Sum of next-token cross-entropy over label tokens, and their count.

    The output head runs only at positions that have a label: prompt tokens (most of an SFT
    row) never get vocabulary-sized logits, which saves the largest activation of the step.
    """
    import torch.nn.functional as F

    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    # no KV cache: a loss needs none, and in eval mode one would make compiled layers recompile per layer
    hidden = causal.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          position_ids=batch["position_ids"], use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    logits = causal.lm_head(hidden[:, :-1][keep])
    loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
    return loss, int(keep.sum())


def label_loss_module(model):
    """``token_loss_sum`` as a module around ``model``: what `accelerate launch` prepares, so that
    DeepSpeed's hooks see one forward per micro-batch at its root (ZeRO-3 gathers and releases
    each layer's parameters around it)."""
    import torch

    class LabelLoss(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **batch):
            return token_loss_sum(self.inner, batch)

    return LabelLoss(model)


def validation_loss(loss_of: Callable, rows: list[PackedRow], micro_batch: int, pad_id: int, device: str,
                    dtype=None) -> float:
    """Mean token loss over ``rows``; ``loss_of(batch)`` gives (loss sum, label tokens)."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), micro_batch):
            loss, n = loss_of(collate(rows[i:i + micro_batch], pad_id, dtype, device))
            total, count = total + float(loss), count + n
    return total / max(count, 1)


def wrap_lora(model, config: TrainConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def probe_micro_batch(model, rows: list[PackedRow], m: int, pad_id: int, device: str,
                      config: TrainConfig, timed: bool = False) -> tuple[float, float | None]:
    """(peak memory in MiB, tokens/s) of a forward and backward over the ``m`` longest rows.
    Tokens/s only if ``timed`` and within the budget, from a second pass: the first pays for
    allocating the size's memory."""
    longest = micro_batches(rows, m)[0]  # what an epoch's widest micro-batch holds
    batch = collate(longest, pad_id, mask_dtype(device, config), device)

    def forward_backward() -> None:
        with forward_precision(device, config):
            loss, _ = token_loss_sum(model, batch)
        loss.backward()
        model.zero_grad(set_to_none=True)

    with PeakMemory(device) as peak:
        forward_backward()
    if not timed or peak.peak / 2**20 > config.memory_budget_mb:
        return peak.peak / 2**20, None
    began = time.perf_counter()
    forward_backward()
    return peak.peak / 2**20, sum(len(r.input_ids) for r in longest) / (time.perf_counter() - began)


def compile_layers(model) -> int:
    """torch.compile each decoder layer in place; the layers share one code object, so one graph
    serves all of them. Returns how many were compiled."""
    import torch

    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = causal.model.layers
    # room for a graph per distinct guard (row widths, training/eval) without falling back to eager
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for layer in layers:
        layer.compile()
    return len(layers)


@functools.lru_cache(maxsize=2)
def epoch_order(rows: int, seed: int) -> tuple[int, ...]:
    """The permutation of ``rows`` rows for an epoch seeded ``seed`` (kept: every step of the epoch reads it)."""
    import torch

    return tuple(torch.randperm(rows, generator=torch.Generator().manual_seed(seed)).tolist())


def step_rows(train_rows: list[PackedRow], step: int, config: TrainConfig, fill: bool) -> list[PackedRow]:
    """The rows of optimizer step ``step``: a slice of the epoch's permutation, a pure function of
    (seed, epoch). ``fill``: an epoch's last, short step wraps around to the permutation's start, so
    that every step has ``effective_batch`` rows (launched processes must run the same micro-batches)."""
    per_epoch = math.ceil(len(train_rows) / config.effective_batch)
    epoch, offset = divmod(step, per_epoch)
    order = epoch_order(len(train_rows), config.seed + epoch)
    picked = list(order[offset * config.effective_batch:(offset + 1) * config.effective_batch])
    if fill:
        picked += [order[i % len(order)] for i in range(config.effective_batch - len(picked))]
    return [train_rows[i] for i in picked]


def micro_batches(picked: list[PackedRow], micro: int, rank: int = 0, ranks: int = 1) -> list[list[PackedRow]]:
    """This process's micro-batches of one step's rows, longest rows first.

    A micro-batch is padded to its longest row, so rows of like length go together: a step's
    gradient is the same sum over its rows whatever their grouping, with less padding computed
    (README, "LoRA training on CPU"). Sorted before the processes take every ``ranks``-th row: the
    processes run their k-th micro-batches in lockstep (ZeRO-3 gathers each layer for all), and
    these come from one band of lengths; each process's tokens differ by less than a row."""
    ordered = sorted(picked, key=lambda r: -len(r.input_ids))  # stable: ties keep the permutation's order
    mine = ordered[rank::ranks]
    return [mine[i:i + micro] for i in range(0, len(mine), micro)]


def real_share(train_rows: list[PackedRow], config: TrainConfig, micro: int, rank: int = 0, ranks: int = 1,
               fill: bool = False) -> float:
    """The share of the positions the first epoch computes (``micro_batches`` of ``micro`` rows,
    each padded to its longest) that are real tokens; ``fill`` as for ``step_rows``."""
    real = padded = 0
    for step in range(math.ceil(len(train_rows) / config.effective_batch)):
        for group in micro_batches(step_rows(train_rows, step, config, fill), micro, rank, ranks):
            real += sum(len(r.input_ids) for r in group)
            padded += len(group) * max(len(r.input_ids) for r in group)
    return real / padded if padded else 1.0


def train_lora(model, pad_id: int, train_rows: list[PackedRow], val_rows: list[PackedRow], config: TrainConfig,
               out_dir: Path, device: str = "cpu",
               on_step: Callable[[int, float], None] | None = None,
               probe_cache: Path | None = None, accelerator=None) -> TrainResult:
    """Train a LoRA adapter on ``model`` (a peft model from ``wrap_lora``); resumes from ``out_dir``.

    ``probe_cache``: a JSON file keeping the measured peak memory (and on CPU tokens/s) per
    micro-batch size for this (base model, device, precision, sequence length, LoRA config,
    threads), so only the first training measures.
    ``accelerator``: set in a process started by `accelerate launch` (launch.py). Each process then
    takes its share of every step's rows, and model and optimizer go through ``accelerator.prepare``
    (DeepSpeed ZeRO-3 on GPUs); checkpoints are accelerate's, and every process writes its part."""
    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    if not train_rows:
        raise ValueError("no training rows: the dataset is empty after filtering")
    ranks, rank = (accelerator.num_processes, accelerator.process_index) if accelerator else (1, 0)
    if config.effective_batch % ranks:
        raise ValueError(f"effective_batch {config.effective_batch} is not a multiple of {ranks} processes")
    torch.manual_seed(config.seed)
    model.to(device)
    model.train()
    checkpoints = out_dir / "checkpoints"
    latest = _latest_checkpoint(checkpoints)
    state = json.loads((latest / "state.json").read_text()) if latest else None
    dtype = mask_dtype(device, config)

    compiled = config.compile_layers and accelerator is None  # launched processes run eager
    # the probe runs eager: it says nothing of compiled steps' speed (TrainConfig.micro_batch_by_speed)
    timed = device == "cpu" and config.micro_batch_by_speed and not compiled

    def fits(m: int) -> bool:
        known = cached.get(str(m))
        if not usable(known):
            peak_mb, tokens_per_s = probe_micro_batch(model, train_rows, m, pad_id, device, config, timed)
            known = measured[m] = {"peak_mb": peak_mb, "tokens_per_s": tokens_per_s}
        probe[m] = known["peak_mb"]
        speed[m] = known.get("tokens_per_s") if timed else None  # reported as what decided
        return probe[m] <= config.memory_budget_mb

    def usable(known) -> bool:  # an older cache held the peak alone, and an untimed one no speed
        return (isinstance(known, dict) and isinstance(known.get("peak_mb"), (int, float))
                and (not timed or known.get("tokens_per_s") is not None
                     or known["peak_mb"] > config.memory_budget_mb))

    probe: dict[int, float] = {}
    speed: dict[int, float | None] = {}
    measured: dict[int, dict] = {}
    cached = json.loads(probe_cache.read_text()) if probe_cache and probe_cache.exists() else {}
    per_rank = config.effective_batch // ranks

    def epoch_speed(m: int) -> float | None:  # the probe times full rows; an epoch's micro-batches compute padding too
        if speed.get(m) is None:
            return None
        return speed[m] * real_share(train_rows, config, m, rank, ranks, fill=accelerator is not None)

    micro = state["micro_batch"] if state else micro_batch_for(per_rank, fits, epoch_speed if timed else None)
    if accelerator is not None:  # the first process's measurement: every process runs the same micro-batches
        from accelerate.utils import broadcast_object_list

        micro = broadcast_object_list([micro])[0]
    if probe_cache and not state and rank == 0 and measured:
        write_json_atomic(probe_cache, {**cached, **{str(m): entry for m, entry in measured.items()}})
    accum = accumulation_steps(per_rank, micro)
    per_epoch = math.ceil(len(train_rows) / config.effective_batch)
    total_steps = per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    if compiled:
        compile_layers(model)
    params = [p for p in model.parameters() if p.requires_grad]
    fused = device == "cuda" and accelerator is None  # DeepSpeed steps its own partitions
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0, fused=fused or None)
    warmup = max(1, total_steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup))))
    if accelerator is None:
        trainee = model

        def loss_of(batch):
            return token_loss_sum(model, batch)
    else:
        _configure_deepspeed(accelerator, micro, accum)
        trainee, optimizer = accelerator.prepare(label_loss_module(model), optimizer)

        def loss_of(batch):
            return trainee(**batch)
    losses, val_losses, start_step, tokens, seconds = [], [], 0, 0, 0.0
    if state:
        if accelerator is not None:
            accelerator.load_state(str(latest / "accelerate"))
        else:
            set_peft_model_state_dict(model, torch.load(latest / "adapter.pt", weights_only=True))
            optimizer.load_state_dict(torch.load(latest / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(latest / "scheduler.pt", weights_only=True))
        losses, val_losses = [tuple(x) for x in state["losses"]], [tuple(x) for x in state["val_losses"]]
        start_step, tokens, seconds, probe = state["step"], state["tokens"], state["seconds"], state["probe_mb"]
        speed = state.get("probe_tokens_per_s", {})

    def checkpoint(done: int) -> None:
        record = {"step": done, "micro_batch": micro, "losses": losses, "val_losses": val_losses,
                  "tokens": tokens, "seconds": seconds, "probe_mb": probe, "probe_tokens_per_s": speed}
        if accelerator is None:
            _save_checkpoint(checkpoints, done, {
                "adapter.pt": get_peft_model_state_dict(model), "optimizer.pt": optimizer.state_dict(),
                "scheduler.pt": scheduler.state_dict()}, record)
        else:
            _save_launched_checkpoint(accelerator, checkpoints, done, scheduler.state_dict(), record)

    peak = PeakMemory(device)
    with peak:
        for step in range(start_step, total_steps):
            began = time.perf_counter()
            picked = step_rows(train_rows, step, config, fill=accelerator is not None)
            label_tokens = sum(r.label_tokens for r in picked) or 1
            step_loss = torch.zeros((), device=device)
            for group in micro_batches(picked, micro, rank, ranks):
                batch = collate(group, pad_id, dtype, device)
                if accelerator is None:
                    with forward_precision(device, config):
                        loss, _ = token_loss_sum(model, batch)
                    (loss / label_tokens).backward()
                else:
                    with accelerator.accumulate(trainee), forward_precision(device, config, accelerator):
                        loss, _ = loss_of(batch)
                        # accelerate divides by the accumulation steps and the processes' gradients are
                        # averaged: scaled back, a step's gradient is the sum over its label tokens
                        accelerator.backward(loss * (accum * ranks / label_tokens))
                step_loss += loss.detach() / label_tokens
            tokens += sum(len(r.input_ids) for r in picked)
            if accelerator is None:
                torch.nn.utils.clip_grad_norm_(params, 1.0)
            else:  # a no-op under DeepSpeed, which clips in its own step (the config's gradient_clipping)
                accelerator.clip_grad_norm_(params, 1.0)
                step_loss = accelerator.reduce(step_loss, "sum")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step_loss = float(step_loss)
            if not math.isfinite(step_loss):  # before any checkpoint: a resumed run starts from the last good step
                raise FloatingPointError(f"training loss is {step_loss} at step {step + 1}; no checkpoint written")
            seconds += time.perf_counter() - began
            done = step + 1
            losses.append((done, step_loss))
            if val_rows and (done % config.eval_every == 0 or done == total_steps):
                trainee.eval()
                with forward_precision(device, config, accelerator):
                    val_losses.append((done, validation_loss(loss_of, val_rows, micro, pad_id, device, dtype)))
                trainee.train()
            due = done % config.checkpoint_every == 0 or done == total_steps
            if due:
                checkpoint(done)
            if (observer := STEP_OBSERVER.get()) is not None:
                observer(done, total_steps, step_loss)
            if on_step:
                try:
                    on_step(done, step_loss)
                except BaseException:  # stopped (quota, operator): keep the paid-for steps first
                    if not due:
                        checkpoint(done)
                    raise
    adapter_dir = out_dir / "adapter"
    if accelerator is None:
        model.save_pretrained(adapter_dir)
    else:  # every process takes part in gathering ZeRO-3's partitions; the first one writes
        weights = accelerator.get_state_dict(trainee)
        if accelerator.is_main_process:
            inner = {k.removeprefix("inner."): v for k, v in weights.items()}
            model.save_pretrained(adapter_dir, state_dict=inner)
        accelerator.wait_for_everyone()
    return TrainResult(str(adapter_dir), total_steps, micro, accum, tokens, seconds,
                       tokens / seconds if seconds else 0.0, peak.peak / 2**20,
                       probe_mb={int(k): v for k, v in probe.items()},
                       probe_tokens_per_s={int(k): v for k, v in speed.items()},
                       losses=losses, val_losses=val_losses, resumed_from=start_step)


def _configure_deepspeed(accelerator, micro: int, accum: int) -> None:
    """The measured micro-batch and its accumulation, told to accelerate and to DeepSpeed alike
    (no dataloader goes through ``prepare`` for DeepSpeed to read them from)."""
    accelerator.gradient_accumulation_steps = accum
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro
        plugin.deepspeed_config["gradient_accumulation_steps"] = accum


def _save_launched_checkpoint(accelerator, folder: Path, step: int, scheduler_state: dict, record: dict,
                              keep: int = 2) -> None:
    """A launched run's checkpoint: accelerate's state (each process writes its ZeRO partition),
    then the scheduler and state.json by the first process, and the rename that completes it."""
    import torch

    tmp, final = folder / f".tmp-{step:06d}", folder / f"step-{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "accelerate"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(scheduler_state, tmp / "scheduler.pt")
        (tmp / "state.json").write_text(json.dumps(record))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(folder.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write by rename: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def _latest_checkpoint(folder: Path) -> Path | None:
    done = sorted(p for p in folder.glob("step-*") if (p / "state.json").exists()) if folder.exists() else []
    return done[-1] if done else None


def _save_checkpoint(folder: Path, step: int, tensors: dict, state: dict, keep: int = 2) -> None:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, value in tensors.items():
        torch.save(value, tmp / name)
    (tmp / "state.json").write_text(json.dumps(state))  # last: a checkpoint is complete once it has state.json
    final = folder / f"step-{step:06d}"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def result_json(result: TrainResult) -> str:
    return json.dumps(asdict(result))
