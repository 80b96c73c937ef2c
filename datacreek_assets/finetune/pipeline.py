"""Fine-tune -> GGUF -> QA evaluation for one tenant, as plain functions the assets call.

Files live under ``<models_dir>/tenants/<tenant>/``:
- ``runs/<run_key>/``: checkpoints, the adapter, ``train.json`` and ``lineage.json`` (its dataset
  version) of one training
  configuration (run_key hashes the dataset version, base model and training config,
  so a retried run resumes its own checkpoints and never another configuration's);
  for an averaged adapter (``average_seeds``), its own folder holds ``adapter/``, ``averaged.json``
  and ``lineage.json`` naming the members, whose trainings have folders of their own;
- ``gguf/<run_key>/``: ``model.f16.gguf``, ``model.q8_0.gguf``, ``adapter.gguf``;
- ``latest.json``: the newest finished training (written by rename, last).
The base model's checkpoint and its f16 GGUF are shared by all tenants under
``base_cache_dir``.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from datacreek_assets import cpu_features
from datacreek_assets.finetune.averaging import AveragedAdapter
from datacreek_assets.finetune.base_model import base_model_dir, load_base
from datacreek_assets.finetune.launch import run_launched, write_job
from datacreek_assets.finetune.packing import rows_for
from datacreek_assets.finetune.training import (
    STEP_OBSERVER, TrainConfig, TrainResult, plan_device, precision_of, train_lora, wrap_lora, write_json_atomic,
)

DATASET_PREFIX = "datasets/sft"


class FineTuneError(RuntimeError):
    pass


@dataclass
class SftData:
    version: str
    template_sha: str
    train: list[dict]
    validation: list[dict]


def read_sft(store) -> SftData:
    """The tenant's newest SFT dataset version (chat format) from its object store."""
    if not store.exists(f"{DATASET_PREFIX}/latest.json"):
        raise FineTuneError("the tenant has no SFT dataset yet: materialize sft_dataset first")
    version = store.get_json(f"{DATASET_PREFIX}/latest.json")["version"]
    manifest = store.get_json(f"{DATASET_PREFIX}/{version}/manifest.json")
    chats = store.get_jsonl(f"{DATASET_PREFIX}/{version}/chat.jsonl")
    return SftData(version, manifest["template_sha"], [c for c in chats if c["split"] == "train"],
                   [c for c in chats if c["split"] == "validation"])


def effective_config(device: str, load_in_8bit: bool, launched: bool, config: TrainConfig) -> tuple[TrainConfig, str]:
    """``config`` as the training runs it, and why when that differs. ``cpu_precision`` and
    ``compile_layers`` are speed settings, so a run config that asks for them still trains on every
    rung, a CPU fallback node included:
    - ``compile_layers`` is off under `accelerate launch` (the launched processes run eager), on
      an int8 base (bitsandbytes' layers; compiled training is measured on fp32 bases only) and on
      a CPU where inductor's kernels are not the CPU's widest (`cpu_features.inductor_native_kernels`);
    - on CPU, "bf16" runs in fp32 on an int8 base (which computes in int8) and on a CPU without
      AMX (`cpu_features.fast_bf16`: slower than fp32 there, emulated or not)."""
    notes = []
    if config.compile_layers and launched:
        config = replace(config, compile_layers=False)
        notes.append("compile_layers does not apply under `accelerate launch`")
    if config.compile_layers and load_in_8bit:
        config = replace(config, compile_layers=False)
        notes.append("compile_layers does not apply to an int8 base")
    if config.compile_layers and device == "cpu" and not cpu_features.inductor_native_kernels():
        config = replace(config, compile_layers=False)
        notes.append("compile_layers not used: compiled CPU training is verified with the CPU's own widest kernels "
                     "only (inductor's AVX2 kernels on an AVX-512 CPU gave NaN losses), eager used")
    if device == "cpu" and config.cpu_precision == "bf16" and load_in_8bit:
        config = replace(config, cpu_precision="fp32")
        notes.append("cpu_precision bf16 does not apply to an int8 base")
    elif device == "cpu" and config.cpu_precision == "bf16" and not cpu_features.fast_bf16():
        config = replace(config, cpu_precision="fp32")
        notes.append("cpu_precision bf16 not used: bfloat16 is slower than fp32 on a CPU without AMX, fp32 used")
    return config, "; ".join(notes)


def run_key(dataset_version: str, base_model: str, config: TrainConfig, placement: str = "") -> str:
    """Checkpoints resume only into the same data, base, configuration and placement (device, precision).

    The precision the training computes in is part of ``placement``: ``gpu_precision`` and
    ``cpu_precision`` are left out of the configuration hashed here, so each changes nothing on the
    other device and earlier keys stay valid.
    ``compile_layers`` and ``micro_batch_by_speed`` change how a step is computed, not what it
    computes: a compiled run resumes an uncompiled one's checkpoints (a resumed run keeps its
    micro-batch)."""
    how = ("gpu_precision", "cpu_precision", "compile_layers", "micro_batch_by_speed")
    # a member of an average is the same training as that seed alone: it resumes and is reused
    settings = {k: v for k, v in asdict(config).items() if k not in (*how, "average_seeds")}
    blob = json.dumps([dataset_version, base_model, settings, placement], sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def averaged_run_key(member_keys: list[str]) -> str:
    """The averaged adapter's key: its members' keys, in seed order."""
    return hashlib.sha256(json.dumps(["average", member_keys]).encode()).hexdigest()[:16]


def read_latest(tenant_dir: Path) -> dict:
    latest = tenant_dir / "latest.json"
    if not latest.exists():
        raise FineTuneError("no finished fine-tuning for this tenant: materialize finetuned_adapter first")
    return json.loads(latest.read_text())


@dataclass
class FineTuneOutcome:
    run_key: str
    mlflow_run_id: str
    dataset: SftData
    result: TrainResult
    device: str
    device_reason: str
    load_in_8bit: bool
    dropped_too_long: int
    reschedule_latency_s: float | None = None  # after an interrupted attempt (see heartbeat.py)
    precision: str = "fp32"  # what the training computed in: fp32, bf16 (autocast, CUDA or CPU) or int8 (CPU base)
    members: list[FineTuneOutcome] = field(default_factory=list)  # the trainings an averaged adapter is made of
    averaged: AveragedAdapter | None = None


def gives_memory_back(func):
    """After `func`, hand the heap it freed back to the OS. A training or export frees gigabytes
    of tensors that glibc keeps in its arenas: without this, each one in a long-lived process
    (the demo, a code server running in-process steps) stacks ~5 GiB on the last (measured:
    5.7 GiB resident after a SmolLM2 training, 0.65 GiB after `malloc_trim`)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        finally:
            gc.collect()
            try:
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except (OSError, AttributeError):  # not glibc: nothing to trim
                pass

    return wrapper


@gives_memory_back
def fine_tune(tenant_dir: Path, base_cache: Path, base_model: str, data: SftData, config: TrainConfig,
              tracking, cpu_fallback: str, gpus: int, on_step=None, run_tags: dict | None = None,
              launcher: str = "auto") -> FineTuneOutcome:
    """Train (or resume) the tenant's adapter; logs params and losses to the tenant's MLflow experiment.
    ``run_tags`` (the Dagster run id, partition and asset key) go on the MLflow run. ``launcher``
    (training.LAUNCHERS) says whether `accelerate launch` starts the training (launch.py).

    With ``config.average_seeds`` n > 1 it trains n members (seeds ``config.seed`` to
    ``config.seed + n - 1``), each its own run key, checkpoints and MLflow run (ended as the member
    finishes), so a retry on the same placement resumes the member it stopped in and reuses those
    that finished (another placement, such as the CPU fallback rung, trains its own); then it
    releases their averaged adapter (averaging.py) under a run key of its own, with its own MLflow
    run. ``latest.json`` names the released adapter and is written last."""
    members = []
    observer = STEP_OBSERVER.get()
    for i in range(config.average_seeds):
        if observer is not None:  # the CLI's progress bar counts every member's steps, not each from 0
            n = config.average_seeds
            STEP_OBSERVER.set(lambda step, total, loss, i=i: observer(i * total + step, n * total, loss))
        try:
            member = _train_member(tenant_dir, base_cache, base_model, data, replace(config, seed=config.seed + i),
                                   tracking, cpu_fallback, gpus, on_step, run_tags, launcher)
        finally:
            STEP_OBSERVER.set(observer)
        if config.average_seeds > 1 and tracking.run(member.mlflow_run_id).info.status == "RUNNING":
            tracking.finish(member.mlflow_run_id)  # its training is done, whatever happens to the next
        members.append(member)
    outcome = members[0] if len(members) == 1 else _average_members(tenant_dir, base_cache, base_model, data,
                                                                    config, members, tracking, run_tags)
    write_json_atomic(tenant_dir / "latest.json", {
        "run_key": outcome.run_key, "mlflow_run_id": outcome.mlflow_run_id, "dataset_version": data.version,
        "base_model": base_model, "base_dir": str(base_model_dir(base_model, base_cache)),
        "adapter_dir": outcome.result.adapter_dir, "device": outcome.device,
        "load_in_8bit": outcome.load_in_8bit, "precision": outcome.precision})
    return outcome


@gives_memory_back
def _train_member(tenant_dir: Path, base_cache: Path, base_model: str, data: SftData, config: TrainConfig,
                  tracking, cpu_fallback: str, gpus: int, on_step, run_tags: dict | None,
                  launcher: str) -> FineTuneOutcome:
    """One training (or its resumption) with ``config``'s seed."""
    import torch

    from datacreek_assets.finetune.heartbeat import TrainingHeartbeat

    heartbeat = TrainingHeartbeat(tenant_dir / "training_heartbeat.json")
    rescheduled_after = heartbeat.rescheduled_after()
    plan = plan_device(gpus, cpu_fallback, launcher)
    base_dir = base_model_dir(base_model, base_cache)
    load_8bit = plan.load_in_8bit
    try:
        if plan.accelerate_config:  # the launched processes load the model; this one tokenizes
            from transformers import AutoTokenizer

            model, tokenizer = None, AutoTokenizer.from_pretrained(base_dir)
        else:
            model, tokenizer = load_base(base_dir, load_in_8bit=load_8bit)
    except (ImportError, RuntimeError, ValueError) as err:  # bitsandbytes without a CPU int8 backend
        if not load_8bit:
            raise
        load_8bit, reason = False, f"{plan.reason}; 8-bit unavailable ({err.__class__.__name__}: {err}), fp32 used"
        model, tokenizer = load_base(base_dir)
    else:
        reason = plan.reason
    train_rows, dropped = rows_for(tokenizer, data.train, config.max_seq_len)
    val_rows, _ = rows_for(tokenizer, data.validation, config.max_seq_len)
    config, note = effective_config(plan.device, load_8bit, bool(plan.accelerate_config), config)
    reason = f"{reason}; {note}" if note else reason
    precision = precision_of(plan.device, load_8bit, config)
    if precision == "bf16" and plan.device == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise FineTuneError("gpu_precision 'bf16' needs a GPU with native bfloat16 (compute capability 8.0 or "
                            "newer); this one would emulate it slowly: use 'fp32'")
    key = run_key(data.version, base_model, config, "-".join(filter(None, (plan.device, precision, plan.placement))))
    out_dir = tenant_dir / "runs" / key
    out_dir.mkdir(parents=True, exist_ok=True)
    # lineage: which dataset version this training learns from (erasure finds tainted trainings by it)
    write_json_atomic(out_dir / "lineage.json", {"dataset_version": data.version, "base_model": base_model})
    run_file = out_dir / "mlflow_run_id"
    if run_file.exists():  # a resumed training continues its MLflow run
        run_id = run_file.read_text().strip()
        tracking.reopen(run_id, run_tags or {})
    else:
        run_id = tracking.start_run(f"finetune-{key}", _run_params(config, base_model, data, plan.device, load_8bit,
                                                                    precision, key), tags=run_tags)
        run_file.write_text(run_id)
    if rescheduled_after is not None:
        tracking.log_metric(run_id, "reschedule_latency_s", rescheduled_after)
    if model is not None:
        torch.manual_seed(config.seed)
        peft_model = wrap_lora(model, config)

    def step_done(step: int, loss: float) -> None:
        heartbeat.beat(key, step, plan.device)
        if on_step is not None:
            on_step(step, loss)

    heartbeat.beat(key, 0, plan.device)
    try:
        if plan.accelerate_config:
            job_dir = out_dir / "launch"
            write_job(job_dir, base_dir, out_dir, config, tokenizer.pad_token_id, train_rows, val_rows,
                      torch.get_num_threads())
            result = run_launched(plan, config, job_dir, on_step=step_done)
        else:
            # speeds measured with other threads are not this training's (the memory is the same)
            probe_cache = base_dir / "probes" / (f"{plan.device}-{precision}-{config.max_seq_len}"
                                                 f"-r{config.lora_rank}-{'_'.join(config.target_modules)}"
                                                 f"-t{torch.get_num_threads()}.json")
            result = train_lora(peft_model, tokenizer.pad_token_id, train_rows, val_rows, config, out_dir,
                                plan.device, on_step=step_done, probe_cache=probe_cache)
    except BaseException as err:
        # an Exception ended the training in Python (a failure, a quota stop); anything else came
        # from outside (the SIGTERM of an evicted node, which Dagster turns into an interrupt)
        stopped = isinstance(err, Exception)
        heartbeat.close("stopped" if stopped else "interrupted")
        # a retry resumes the checkpoints and reopens nothing
        tracking.finish(run_id, "FAILED" if stopped else "KILLED")
        run_file.unlink(missing_ok=True)
        raise
    heartbeat.close("finished")
    tokenizer.save_pretrained(result.adapter_dir)
    logged = out_dir / "mlflow_logged"
    if not logged.exists():  # once per training, also when a crash came between training and logging
        _log_training(tracking, run_id, result)
        logged.touch()
    (out_dir / "train.json").write_text(json.dumps(asdict(result)))
    return FineTuneOutcome(key, run_id, data, result, plan.device, reason, load_8bit, dropped, rescheduled_after,
                           precision)


def _run_params(config: TrainConfig, base_model: str, data: SftData, device: str, load_8bit: bool,
                precision: str, key: str) -> dict:
    """A training's MLflow params (an averaged adapter's add what it is made of)."""
    return {"learning_rate": config.learning_rate, "epochs": config.epochs, "max_steps": config.max_steps,
            "lora_rank": config.lora_rank, "lora_alpha": config.lora_alpha, "base_model": base_model,
            "dataset_version": data.version, "template_sha": data.template_sha,
            "effective_batch": config.effective_batch, "max_seq_len": config.max_seq_len, "seed": config.seed,
            "device": device, "load_in_8bit": load_8bit, "precision": precision, "run_key": key}


def _average_members(tenant_dir: Path, base_cache: Path, base_model: str, data: SftData, config: TrainConfig,
                     members: list[FineTuneOutcome], tracking, run_tags: dict | None) -> FineTuneOutcome:
    """The members' averaged adapter in ``runs/<averaged key>/adapter``, with its MLflow run (the one
    the release's export and evaluation log to). A retry after the averaging finished
    (``averaged.json`` written last) reuses it when its members are these trainings; members
    trained again (model GC had deleted them) are averaged again, under a new MLflow run."""
    from datacreek_assets.finetune.averaging import average_adapters

    first = members[0]
    key = averaged_run_key([m.run_key for m in members])
    out_dir = tenant_dir / "runs" / key
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "lineage.json", {"dataset_version": data.version, "base_model": base_model,
                                                 "members": [m.run_key for m in members]})
    report_file = out_dir / "averaged.json"
    run_file = out_dir / "mlflow_run_id"
    member_runs = [m.mlflow_run_id for m in members]
    done = json.loads(report_file.read_text()) if report_file.exists() else {}
    reused = done.pop("member_mlflow_run_ids", None) == member_runs
    if reused:
        averaged = AveragedAdapter(**done)
    else:
        if done:  # averaged from trainings that are gone: its run describes those
            run_file.unlink(missing_ok=True)
        averaged = gives_memory_back(average_adapters)(
            base_model_dir(base_model, base_cache), [Path(m.result.adapter_dir) for m in members],
            out_dir / "adapter", data.validation, config.max_seq_len)
    if run_file.exists():
        run_id = run_file.read_text().strip()
        tracking.reopen(run_id, run_tags or {})
    else:
        params = _run_params(config, base_model, data, first.device, first.load_in_8bit, first.precision, key)
        run_id = tracking.start_run(f"finetune-{key}", {
            **params, "lora_rank": averaged.rank, "lora_alpha": averaged.rank, "member_lora_rank": config.lora_rank,
            "average_seeds": len(members), "member_run_keys": ",".join(m.run_key for m in members),
            "member_mlflow_run_ids": ",".join(member_runs)}, tags=run_tags)
        run_file.write_text(run_id)
    if not reused:
        if averaged.val_loss is not None:
            tracking.log_metric(run_id, "val_loss", averaged.val_loss)
        for i, loss in enumerate(averaged.member_val_losses):
            if loss is not None:
                tracking.log_metric(run_id, f"member{i}_val_loss", loss)
        tracking.log_artifact(run_id, Path(averaged.adapter_dir), "adapter")
        write_json_atomic(report_file, {**asdict(averaged), "member_mlflow_run_ids": member_runs})
    results = [m.result for m in members]
    seconds = sum(r.train_seconds for r in results)
    tokens = sum(r.train_tokens for r in results)
    result = replace(first.result, adapter_dir=averaged.adapter_dir, steps=sum(r.steps for r in results),
                     train_tokens=tokens, train_seconds=seconds, tokens_per_s=tokens / seconds if seconds else 0.0,
                     peak_memory_mb=max(r.peak_memory_mb for r in results), losses=[], val_losses=[],
                     resumed_from=sum(r.resumed_from for r in results))
    return replace(first, run_key=key, mlflow_run_id=run_id, result=result, members=members, averaged=averaged)


def _log_training(tracking, run_id: str, result: TrainResult) -> None:
    tracking.log_history(run_id, "val_loss", result.val_losses)
    tracking.log_history(run_id, "train_loss", result.losses)
    tracking.log_metric(run_id, "train_tokens_per_s", result.tokens_per_s)
    tracking.log_metric(run_id, "peak_memory_mb", result.peak_memory_mb)
    tracking.log_artifact(run_id, Path(result.adapter_dir), "adapter")


def adapted_model(latest: dict):
    """(peft model, tokenizer): the base with the tenant's newest adapter attached."""
    from peft import PeftModel

    model, tokenizer = load_base(Path(latest["base_dir"]))
    return PeftModel.from_pretrained(model, latest["adapter_dir"]).eval(), tokenizer


def base_gguf(base_dir: Path) -> Path:
    """The base model's f16 GGUF, shared by every tenant (written once, inside the checkpoint's
    directory so a rebuilt checkpoint never pairs with a stale file)."""
    from datacreek_assets.finetune.gguf_export import export_model

    path = base_dir / "model.f16.gguf"
    if not path.exists():
        model, tokenizer = load_base(base_dir)
        export_model(model, tokenizer, path, "f16", name=base_dir.name)
    return path


@gives_memory_back
def export_release(latest: dict, tenant_dir: Path) -> dict:
    """The tenant's GGUF files: merged f16 and q8_0, the adapter alone, and the shared base f16."""
    from datacreek_assets.finetune.gguf_export import export_lora, export_model

    peft_model, tokenizer = adapted_model(latest)
    folder = tenant_dir / "gguf" / latest["run_key"]
    folder.mkdir(parents=True, exist_ok=True)
    files = {"lora": export_lora(peft_model, tokenizer, folder / "adapter.gguf")}
    merged = peft_model.merge_and_unload()  # in place: the adapter is exported first
    files["f16"] = export_model(merged, tokenizer, folder / "model.f16.gguf", "f16")
    files["q8_0"] = export_model(merged, tokenizer, folder / "model.q8_0.gguf", "q8_0")
    base = base_gguf(Path(latest["base_dir"]))
    manifest = {"run_key": latest["run_key"], "base_f16": str(base),
                **{kind: asdict(f) for kind, f in files.items()}}
    write_json_atomic(folder / "manifest.json", manifest)
    return manifest


@gives_memory_back
def verify_release(latest: dict, manifest: dict, scratch: Path) -> dict:
    """llama.cpp against torch on one teacher-forced sequence (see `llama_cpp.check_gguf`): an f32
    export strictly, the f16 file and base f16 + adapter against their measured f16 error."""
    import copy

    from datacreek_assets.finetune.gguf_export import export_model
    from datacreek_assets.finetune.llama_cpp import check_gguf, f16_emulation, teacher_forced_ids

    peft_model, tokenizer = adapted_model(latest)
    adapter_emulation = f16_emulation(peft_model)  # unmerged: llama.cpp applies the adapter in f32
    merged = copy.deepcopy(peft_model).merge_and_unload().eval()
    del peft_model
    messages = [{"role": "system", "content": "You answer questions."},
                {"role": "user", "content": "What does the json module provide?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = teacher_forced_ids(merged, prompt, {tokenizer.eos_token_id})
    scratch.mkdir(parents=True, exist_ok=True)
    f32 = scratch / "model.f32.gguf"
    try:
        export_model(merged, tokenizer, f32, "f32")
        exact = check_gguf(merged, f32, ids)
    finally:
        f32.unlink(missing_ok=True)
    f16 = check_gguf(merged, Path(manifest["f16"]["path"]), ids, emulation=f16_emulation(merged))
    adapter = check_gguf(merged, Path(manifest["base_f16"]), ids, lora_path=Path(manifest["lora"]["path"]),
                         emulation=adapter_emulation)
    return {"passed": exact.passed and f16.passed and adapter.passed, "tokens": len(ids),
            "generated_tokens": len(ids) - len(prompt),
            **exact.metadata("f32"), **f16.metadata("f16"), **adapter.metadata("adapter")}


EVAL_MODES = ("closed", "retrieval")
TENANT_QUESTIONS_KEY = "eval/questions.jsonl"  # a tenant's own questions: {"question", "answer"} per line


def read_tenant_questions(store) -> list[dict]:
    """The tenant's hand-written questions, if it gave any; malformed lines are an error, not skipped."""
    if not store.exists(TENANT_QUESTIONS_KEY):
        return []
    rows = store.get_jsonl(TENANT_QUESTIONS_KEY)
    bad = [i for i, r in enumerate(rows, 1) if not (isinstance(r, dict) and str(r.get("question", "")).strip()
                                                    and str(r.get("answer", "")).strip())]
    if bad:
        raise FineTuneError(f"{TENANT_QUESTIONS_KEY}: lines {bad[:5]} lack a question or an answer")
    return rows


@dataclass
class EvalSet:
    name: str
    questions: list[str]
    answers: list[str]


def spread(rows: list, n: int) -> list:
    """At most n rows, evenly spaced over the list (every part of a corpus stays represented)."""
    if len(rows) <= n:
        return list(rows)
    return [rows[i * len(rows) // n] for i in range(n)]


def eval_sets(data: SftData, questions: int, tenant_questions: list[dict]) -> list[EvalSet]:
    """The held-out generated questions (those with an answer in the documents) and, when the
    tenant gave them, its own hand-written questions; at most ``questions`` of each (a grounded
    question costs llama.cpp about 2 s per model on two cores)."""
    from datacreek_assets.retrieval.prompt import NOT_IN_DOCUMENTS

    held_out = spread([c for c in data.validation if c.get("answer") and c["answer"] != NOT_IN_DOCUMENTS], questions)
    tenant_questions = spread(tenant_questions, questions)
    sets = [EvalSet("validation", [c["question"] for c in held_out], [c["answer"] for c in held_out])]
    if tenant_questions:
        sets.append(EvalSet("handwritten", [q["question"] for q in tenant_questions],
                            [q["answer"] for q in tenant_questions]))
    return [s for s in sets if s.questions]


@gives_memory_back
def evaluate(latest: dict, manifest: dict, sets: list[EvalSet], index, extractive: bool = True) -> dict:
    """Base vs tuned, each closed-book and with the tenant's retrieval (the passages a served
    request gets), answered by llama.cpp from their f16 GGUF; with retrieval, answers are held to
    spans of the passages as served (``extractive``; False only to measure what that changes). The
    gate reads the retrieval scores of the hand-written set when there is one (people's
    questions), else of the held-out set."""
    from transformers import AutoTokenizer

    from datacreek_assets.embeddings.embedder import embed_texts
    from datacreek_assets.finetune.llama_cpp import answer_questions
    from datacreek_assets.finetune.qa import QaScores
    from datacreek_assets.retrieval.prompt import messages_for

    if not sets:
        raise FineTuneError("nothing to evaluate on: no held-out records and no tenant questions")
    tokenizer = AutoTokenizer.from_pretrained(latest["adapter_dir"])
    prompts: dict[tuple[str, str], list[list[dict]]] = {}
    grounding: dict[tuple[str, str], list] = {}  # what each answer is held to, as served (extractive)
    for s in sets:
        vectors = embed_texts(s.questions)
        passages = [[p.text for p in index.search(v, question=q)] for q, v in zip(s.questions, vectors)]
        prompts[(s.name, "closed")] = [messages_for(q, None) for q in s.questions]
        prompts[(s.name, "retrieval")] = [messages_for(q, p) for q, p in zip(s.questions, passages)]
        grounding[(s.name, "closed")] = [None] * len(s.questions)
        grounding[(s.name, "retrieval")] = passages if extractive else [None] * len(s.questions)
    models = {"base": Path(manifest["base_f16"]), "tuned": Path(manifest["f16"]["path"])}
    answers = {}
    for model, path in models.items():
        flat = [p for key in prompts for p in prompts[key]]
        replies = iter(answer_questions(path, tokenizer, flat, max_new=32,
                                        grounding=[g for key in prompts for g in grounding[key]]))
        for key in prompts:
            answers[(model, *key)] = [next(replies) for _ in prompts[key]]
    scores = {s.name: {f"{model}_{mode}": asdict(QaScores.of(answers[(model, s.name, mode)], s.answers))
                       for model in models for mode in EVAL_MODES} for s in sets}
    gate_set = sets[-1].name
    examples = [{"question": q, "reference": a, **{f"{m}_{mode}": answers[(m, gate_set, mode)][i]
                                                   for m in models for mode in EVAL_MODES}}
                for i, (q, a) in enumerate(zip(sets[-1].questions[:8], sets[-1].answers))]
    return {"sets": scores, "gate_set": gate_set, "decoding": "extractive" if extractive else "free",
            "base": scores[gate_set]["base_retrieval"],
            "tuned": scores[gate_set]["tuned_retrieval"], "examples": examples, "run_key": latest["run_key"]}
