"""LoRA training throughput: the asset's training loop vs transformers `Trainer` + peft.

Same base model (SmolLM2-135M-Instruct; the tiny random Llama with --quick), same SFT
examples (the demo corpus through the dataset generator), same LoRA config, same
learning rate, on the same torch threads, one epoch over the same examples. Both in fp32;
where bfloat16 is faster than fp32 (AMX: `cpu_features.fast_bf16`) also the loop under bf16
autocast (`cpu_precision="bf16"`) against the Trainer in fp32 (its defaults) and in bf16
(`bf16=True`). The loop also runs with its decoder layers compiled (`compile_layers`): its
timed runs are the steady state, after an untimed first epoch in the same process that compiles
(the notes give that epoch's seconds next to a timed one's). After each training, its adapter's
loss on the same held-out records (fp32 forward passes, untimed) says whether both sides reached
the same loss after the same steps.
Both sides see the same number of examples per optimizer step: the candidate packs
them into rows of `max_seq_len` tokens (no padding) with a measured micro-batch;
the baseline pads each batch to its longest example (the data collator's default).
The candidate's output head runs only where there are labels (prompt tokens get no logits).
The unit is real (non-padding) tokens; notes give peak memory (sampled RSS) of each side.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

from bench.harness import Comparison

THREADS = 2
MAX_LEN = 512  # a grounded record with its source passage: ~330 SmolLM2 tokens
PLANNED_STEPS = 4  # optimizer steps per epoch each side is sized for


def sft_chats(limit: int, split: str = "train") -> list[dict]:
    from datacreek_assets.datasets.sft import generate
    from datacreek_assets.demo_corpus import write_demo_corpus
    from datacreek_assets.graph.extraction import extract
    from datacreek_assets.ingest.chunking import chunk_text
    from datacreek_assets.ingest.parsing import ParsedDocument, parse_document
    from datacreek_assets.object_store import LocalObjectStore, TenantObjectStore

    store = TenantObjectStore(LocalObjectStore(tempfile.mkdtemp(prefix="bench-sft-")), "bench")
    chunks, facts = [], []
    for key in write_demo_corpus(store, max_docs=60):
        doc = parse_document(key, store.get(key))
        if not isinstance(doc, ParsedDocument):
            continue
        for chunk in chunk_text(key, doc.text):
            chunks.append({"chunk_id": chunk.chunk_id, "doc_id": key, "position": chunk.position, "text": chunk.text})
            for fact in extract(chunk.text)[1]:
                facts.append({"fact_id": fact.fact_id(key, chunk.chunk_id), "subject": fact.subject.name,
                              "predicate": fact.predicate, "object": fact.object.name, "sentence": fact.sentence,
                              "chunk_id": chunk.chunk_id, "doc_id": key})
    records = generate(facts, chunks).records
    return [r.chat() for r in records if r.split == split][:limit]


def examples_per_trainer_step(examples: list) -> int:
    return max(1, len(examples) // PLANNED_STEPS)


def trainer_baseline(peft_model, tokenizer, examples: list, config, use_cpu: bool, bf16: bool = False) -> None:
    """One epoch of transformers `Trainer` over the unpacked examples, padded per batch (the collator's
    default); ``bf16``: its bfloat16 autocast (`bf16=True`)."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    data = [{"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)} for e in examples]
    per_step = examples_per_trainer_step(examples)
    micro = min(8, per_step)
    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="bench-trainer-"), per_device_train_batch_size=micro,
                             gradient_accumulation_steps=max(1, per_step // micro), num_train_epochs=1,
                             learning_rate=config.learning_rate, lr_scheduler_type="linear", warmup_steps=1,
                             weight_decay=0.0, max_grad_norm=1.0, save_strategy="no", report_to=[],
                             logging_strategy="no", use_cpu=use_cpu, dataloader_num_workers=0,
                             disable_tqdm=True, seed=config.seed, bf16=bf16)
    Trainer(model=peft_model, args=args, train_dataset=data,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)).train()


def comparisons(quick: bool = False) -> list[Comparison]:
    import dataclasses

    import torch

    from datacreek_assets.cpu_features import fast_bf16
    from datacreek_assets.finetune.base_model import SMOLLM2, TINY, base_model_dir, load_base
    from datacreek_assets.finetune.packing import encode, pack
    from datacreek_assets.finetune.training import (
        PeakMemory, TrainConfig, token_loss_sum, train_lora, validation_loss, wrap_lora,
    )
    from datacreek_assets.settings import LocalSettings

    torch.set_num_threads(THREADS)
    name = TINY if quick else SMOLLM2
    base_dir = base_model_dir(name, LocalSettings.from_env().download_cache / "models")
    _, tokenizer = load_base(base_dir)
    chats = sft_chats(32 if quick else 96)
    examples = [e for e in (encode(tokenizer, c["messages"], MAX_LEN) for c in chats) if e is not None]
    held_out = pack([e for e in (encode(tokenizer, c["messages"], MAX_LEN)
                                 for c in sft_chats(8 if quick else 24, "validation")) if e is not None], MAX_LEN)
    rows = pack(examples, MAX_LEN)
    real_tokens = sum(len(e.input_ids) for e in examples)
    config = TrainConfig(effective_batch=max(1, len(rows) // PLANNED_STEPS), max_seq_len=MAX_LEN, learning_rate=1e-3,
                         checkpoint_every=10_000, eval_every=10_000, memory_budget_mb=8192)
    steps = math.ceil(len(rows) / config.effective_batch)  # the loop's optimizer steps (rounding adds one)
    # (loop precision, loop compiled, Trainer precision)
    pairs = [("fp32", False, "fp32"), ("fp32", True, "fp32")] + (
        [("bf16", False, "fp32"), ("bf16", False, "bf16"), ("bf16", True, "fp32"), ("bf16", True, "bf16")]
        if fast_bf16() else [])
    # The asset measures micro-batch memory (and for eager CPU steps tokens/s) once per (model,
    # device, precision, length, LoRA config, threads) and caches it; measure it here per precision,
    # outside the timed runs, with a warm-up that also builds that
    # precision's kernels, so the timed runs are the steady state. A compiled loop warms up over a
    # whole epoch: every row width and micro-batch size the timed runs meet is compiled then (the
    # compiled graphs serve every later model in this process); its seconds are in the notes.
    probe_caches, warm_seconds = {}, {}
    for precision, compiled in dict.fromkeys((loop, compiled) for loop, compiled, _ in pairs):
        if precision not in probe_caches:
            probe_caches[precision] = Path(tempfile.mkdtemp(prefix="bench-probe-")) / "probe.json"
        with tempfile.TemporaryDirectory() as out:
            warm = dataclasses.replace(config, max_steps=0 if compiled else 1, cpu_precision=precision,
                                       compile_layers=compiled)
            warm_model = wrap_lora(load_base(base_dir)[0], warm)
            began = time.perf_counter()  # the training alone, as a timed epoch's seconds in the notes
            train_lora(warm_model, tokenizer.pad_token_id, rows, [], warm, Path(out),
                       probe_cache=probe_caches[precision])
            warm_seconds[precision, compiled] = time.perf_counter() - began

    def held_out_loss(peft_model) -> float:
        peft_model.eval()
        return validation_loss(lambda batch: token_loss_sum(peft_model, batch), held_out, 4,
                               tokenizer.pad_token_id, "cpu")

    def comparison(loop_precision: str, compiled: bool, trainer_precision: str) -> Comparison:
        loop_config = dataclasses.replace(config, cpu_precision=loop_precision, compile_layers=compiled)
        peaks, epoch_seconds, micro_batches = {"candidate": [], "baseline": []}, [], set()
        trained = {}  # the last model each side trained, for its held-out loss (after the timing)

        def candidate() -> int:
            model, _ = load_base(base_dir)
            peft_model = wrap_lora(model, loop_config)
            with PeakMemory("cpu") as peak, tempfile.TemporaryDirectory() as out:
                began = time.perf_counter()
                result = train_lora(peft_model, tokenizer.pad_token_id, rows, [], loop_config, Path(out),
                                    probe_cache=probe_caches[loop_precision])
                epoch_seconds.append(time.perf_counter() - began)
            micro_batches.add(f"{result.micro_batch} × {result.accumulation}")
            peaks["candidate"].append(peak.peak / 2**20)
            trained["candidate"] = peft_model
            return real_tokens

        def baseline() -> int:
            model, _ = load_base(base_dir)
            peft_model = wrap_lora(model, config)
            with PeakMemory("cpu") as peak:
                trainer_baseline(peft_model, tokenizer, examples, config, use_cpu=True,
                                 bf16=trainer_precision == "bf16")
            peaks["baseline"].append(peak.peak / 2**20)
            trained["baseline"] = peft_model
            return real_tokens

        def notes() -> str:
            padded = sum(len(r.input_ids) for r in rows)
            losses = {side: held_out_loss(model) for side, model in trained.items()}
            trained.clear()  # the next comparison trains its own: two 135M models less held
            return (f"{name}, {len(examples)} examples, {real_tokens} real tokens, {len(rows)} packed rows "
                    f"({padded / (len(rows) * MAX_LEN):.0%} full), loop {steps} optimizer steps of "
                    f"{config.effective_batch} rows (micro-batch × accumulation: {', '.join(sorted(micro_batches))}), "
                    f"Trainer steps of {examples_per_trainer_step(examples)} examples; "
                    f"held-out loss after training ({len(held_out)} rows): loop {losses['candidate']:.4f}, "
                    f"Trainer {losses['baseline']:.4f}; peak RSS above start: loop {max(peaks['candidate']):.0f} MiB, "
                    f"Trainer {max(peaks['baseline']):.0f} MiB"
                    + (f"; the untimed first epoch, compiling, took {warm_seconds[loop_precision, True]:.1f} s "
                       f"against {min(epoch_seconds):.1f} s for a timed one" if compiled else ""))

        loop = f"{loop_precision}, compiled layers (steady state)" if compiled else loop_precision
        return Comparison(f"LoRA training tokens/s ({name}, CPU, loop {loop} vs Trainer "
                          f"{trainer_precision}, {THREADS} threads)", candidate, baseline, unit="tokens",
                          repeats=1 if quick else 2, notes=notes)

    return [comparison(*pair) for pair in pairs]
