"""Fine-tuning assets: finetuned_adapter -> gguf_model -> qa_eval, with blocking release checks."""

import json
import tempfile
import time
from pathlib import Path

import dagster as dg

from datacreek_assets.automation import GPU_OP_TAGS, GPU_POOL, downstream_condition, gpu_condition
from datacreek_assets.defs.datasets.assets import sft_dataset
from datacreek_assets.defs.embeddings.assets import LATEST_STATS_KEY, REFERENCE_KEY
from datacreek_assets.defs.finetune.mlflow_runs import END_MLFLOW_RUN
from datacreek_assets.defs.retraining.sensors import DETECTED_AT_TAG
from datacreek_assets.finetune.training import TrainConfig, plan_device
from datacreek_assets.partitions import tenant_asset
from datacreek_assets.pictures import eval_comparison_picture, loss_curve_picture, png_markdown
from datacreek_assets.tenancy import validate_tenant_id
from resources.stores import CreditLedgerResource, FineTuneResource, ObjectStoreResource


class FineTuneConfig(dg.Config):
    """The run-config face of TrainConfig (its defaults are the one source)."""

    learning_rate: float = TrainConfig.learning_rate
    epochs: int = TrainConfig.epochs
    max_steps: int = TrainConfig.max_steps  # 0: as many as the epochs need
    lora_rank: int = TrainConfig.lora_rank
    lora_alpha: int = TrainConfig.lora_alpha
    effective_batch: int = TrainConfig.effective_batch
    max_seq_len: int = TrainConfig.max_seq_len
    memory_budget_mb: int = TrainConfig.memory_budget_mb
    checkpoint_every: int = TrainConfig.checkpoint_every
    eval_every: int = TrainConfig.eval_every
    gpu_precision: str = TrainConfig.gpu_precision  # "bf16" autocast or "fp32", on CUDA only
    cpu_precision: str = TrainConfig.cpu_precision  # "bf16" autocast or "fp32", on CPU with an fp32 base
    compile_layers: bool = TrainConfig.compile_layers  # torch.compile each decoder layer (fp32 base, not launched)
    average_seeds: int = TrainConfig.average_seeds  # train this many seeds and release their averaged adapter


def mlflow_run_tags(context: dg.AssetExecutionContext) -> dict[str, str]:
    """Which Dagster run, partition and asset made an MLflow run. ``dagster_run_id`` is the tag
    dagster-mlflow itself sets and searches, and the run-end hook and sensors find the run by it."""
    return {"dagster_run_id": context.run.run_id, "dagster/partition": context.partition_key,
            "dagster/asset_key": context.asset_key.to_user_string(), "dagster/job": context.run.job_name}


def mlflow_run_link(finetune: FineTuneResource, tracking, run_id: str) -> dict:
    """The materialization's link to its MLflow run: the id, and its UI page where a server runs."""
    url = finetune.mlflow.run_url(tracking, run_id)
    return {"mlflow_run_id": run_id, "mlflow_experiment": tracking.experiment_name,
            **({"mlflow_run": dg.MetadataValue.url(url)} if url else {})}


def training_losses(outcome) -> dict:
    """The losses a materialization shows: the training's, or for an averaged adapter each member's
    (in seed order) and the average's validation loss (members and average measured alike, on CPU)."""
    def rounded(points: list[tuple[int, float]], at: int) -> float | None:
        return round(points[at][1], 4) if points else None

    if outcome.averaged is None:
        result = outcome.result
        return {"first_train_loss": rounded(result.losses, 0), "final_train_loss": rounded(result.losses, -1),
                "val_loss": rounded(result.val_losses, -1)}
    averaged = outcome.averaged
    return {"average_seeds": len(outcome.members),
            "member_run_keys": ", ".join(m.run_key for m in outcome.members),
            "lora_rank_averaged": averaged.rank,
            "member_final_train_losses": json.dumps([rounded(m.result.losses, -1) for m in outcome.members]),
            "member_val_losses": json.dumps([round(v, 4) if v is not None else None
                                             for v in averaged.member_val_losses]),
            "val_loss": round(averaged.val_loss, 4) if averaged.val_loss is not None else None}


@tenant_asset(
    automation_condition=gpu_condition(),
    pool=GPU_POOL,
    op_tags=GPU_OP_TAGS,
    # two retries: on Kubernetes a step whose spot GPU Job failed (evictions beyond its backoff) is
    # retried on on-demand GPUs, then as a CPU 8-bit fallback pod (k8s_launcher.placement_for_attempt)
    retry_policy=dg.RetryPolicy(max_retries=2),
    group_name="finetune",
    kinds={"pytorch", "mlflow"},
    hooks={END_MLFLOW_RUN},
    deps=[sft_dataset],
    description="A LoRA adapter trained on the tenant's SFT dataset (prompt-masked, packed rows, measured "
    "micro-batch, resumable checkpoints), tracked in the tenant's MLflow experiment.",
)
def finetuned_adapter(context: dg.AssetExecutionContext, config: FineTuneConfig, finetune: FineTuneResource,
                      object_store: ObjectStoreResource, credit_ledger: CreditLedgerResource) -> dg.MaterializeResult:
    import torch

    from datacreek_assets.finetune.pipeline import fine_tune, read_sft

    tenant = validate_tenant_id(context.partition_key)
    try:
        train_config = TrainConfig(**config.model_dump())
    except ValueError as err:  # a wrong run config fails the same way on every rung: no retries
        raise dg.Failure(f"invalid fine-tuning config: {err}", allow_retries=False) from err
    torch.set_num_threads(finetune.threads)
    gpus = torch.cuda.device_count()
    try:
        plan = plan_device(gpus, finetune.cpu_fallback, finetune.launcher)
    except ValueError as err:
        raise dg.Failure(f"invalid fine-tuning resource: {err}", allow_retries=False) from err
    if train_config.effective_batch % plan.processes:  # every launched process takes an equal share
        raise dg.Failure(f"invalid fine-tuning config: effective_batch {train_config.effective_batch} is not a "
                         f"multiple of the {plan.processes} training processes ({plan.reason})", allow_retries=False)
    # The meter spans the whole step, not only the training loop: the GPUs are the pod's from the
    # step's start (reading the data, loading the base) to its end (logging the artifacts). It bills
    # every GPU the training occupies: all of an `accelerate launch`'s, one otherwise.
    with credit_ledger.metered(context, tenant, plan.gpus) as meter:
        data = read_sft(object_store.for_tenant(tenant))
        tracking = finetune.tracking(tenant)

        def progress(step: int, loss: float) -> None:
            meter.check()  # out of credits: stop at a step boundary (the checkpoint keeps the work)
            if step % 5 == 0:
                context.log.info(f"step {step}: loss {loss:.4f}")

        outcome = fine_tune(finetune.tenant_dir(tenant), finetune.base_dir(), finetune.base_model, data,
                            train_config, tracking, finetune.cpu_fallback, gpus, on_step=progress,
                            run_tags=mlflow_run_tags(context), launcher=finetune.launcher)
        result = outcome.result
        trainings = outcome.members or [outcome]
        picture = loss_curve_picture(
            [(f"seed {train_config.seed + i}" if outcome.members else "", m.result.losses,
              m.result.val_losses) for i, m in enumerate(trainings)], f"{tenant}: LoRA fine-tuning",
            averaged_val_loss=outcome.averaged.val_loss if outcome.averaged else None)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "loss_curve.png").write_bytes(picture)
            tracking.log_artifact(outcome.mlflow_run_id, Path(tmp) / "loss_curve.png", "pictures")
    return dg.MaterializeResult(
        metadata={
            **mlflow_run_link(finetune, tracking, outcome.mlflow_run_id),
            "metered": f"{meter.resource} x{meter.units}, balance after {meter.balance:.4f} credits",
            "run_key": outcome.run_key,
            "dataset_version": data.version,
            "base_model": finetune.base_model,
            "device": outcome.device,
            "device_plan": outcome.device_reason,
            "base_in_8bit": outcome.load_in_8bit,
            "precision": outcome.precision,
            "train_records": len(data.train),
            "dropped_too_long": outcome.dropped_too_long,
            "steps": result.steps,
            "resumed_from_step": result.resumed_from,
            "reschedule_latency_s": (round(outcome.reschedule_latency_s, 2)
                                     if outcome.reschedule_latency_s is not None else "not rescheduled"),
            "micro_batch": result.micro_batch,
            "gradient_accumulation": result.accumulation,
            "micro_batch_probe_mb": json.dumps(result.probe_mb),
            "micro_batch_probe_tokens_per_s": json.dumps(
                {m: round(v, 1) if v is not None else None for m, v in result.probe_tokens_per_s.items()}),
            "train_tokens": result.train_tokens,
            "tokens_per_s": round(result.tokens_per_s, 1),
            "peak_memory_mb": round(result.peak_memory_mb, 1),
            **training_losses(outcome),
            "loss_curve": dg.MetadataValue.md(png_markdown(picture, "loss curve")),
        },
        data_version=dg.DataVersion(outcome.run_key),
    )


@tenant_asset(
    automation_condition=downstream_condition(),
    group_name="finetune",
    kinds={"gguf"},
    hooks={END_MLFLOW_RUN},
    deps=[finetuned_adapter],
    description="The merged model as GGUF (f16 and q8_0) and the adapter alone as a GGUF LoRA file "
    "(applied by llama.cpp to the shared base file), written by the project's exporter.",
)
def gguf_model(context: dg.AssetExecutionContext, finetune: FineTuneResource) -> dg.MaterializeResult:
    from datacreek_assets.finetune.pipeline import export_release, read_latest

    tenant = validate_tenant_id(context.partition_key)
    latest = read_latest(finetune.tenant_dir(tenant))
    manifest = export_release(latest, finetune.tenant_dir(tenant))
    tracking = finetune.tracking(tenant)
    tracking.log_artifact(latest["mlflow_run_id"], Path(manifest["q8_0"]["path"]).with_name("model.q8_0.gguf"), "gguf")
    tracking.log_artifact(latest["mlflow_run_id"], Path(manifest["lora"]["path"]), "gguf")
    return dg.MaterializeResult(
        metadata={
            **mlflow_run_link(finetune, tracking, latest["mlflow_run_id"]),
            "run_key": latest["run_key"],
            "f16_path": manifest["f16"]["path"],
            "f16_mib": round(manifest["f16"]["bytes"] / 2**20, 1),
            "q8_0_mib": round(manifest["q8_0"]["bytes"] / 2**20, 1),
            "adapter_mib": round(manifest["lora"]["bytes"] / 2**20, 2),
            "base_f16_path": manifest["base_f16"],
        },
        data_version=dg.DataVersion(latest["run_key"]),
    )


@dg.asset_check(asset=gguf_model, blocking=True,
                description="llama.cpp loads each file and is fed torch's tokens (teacher forcing): the f32 "
                "export's logits within 1e-3 of torch (f32 KV cache); for the f16 file and base f16 + adapter, "
                "torch's argmax wherever its top-1/top-2 margin exceeds twice the measured f16 error, and "
                "|Δlogit| a small fraction of the logits' range.")
def gguf_matches_torch(context: dg.AssetCheckExecutionContext, finetune: FineTuneResource) -> dg.AssetCheckResult:
    from datacreek_assets.finetune.pipeline import read_latest, verify_release

    tenant = validate_tenant_id(context.run.tags.get("dagster/partition", ""))
    latest = read_latest(finetune.tenant_dir(tenant))
    manifest = json.loads((finetune.tenant_dir(tenant) / "gguf" / latest["run_key"] / "manifest.json").read_text())
    with tempfile.TemporaryDirectory(dir=finetune.tenant_dir(tenant)) as scratch:
        report = verify_release(latest, manifest, Path(scratch))
    return dg.AssetCheckResult(passed=report.pop("passed"), metadata=report)


@tenant_asset(
    automation_condition=downstream_condition(),
    group_name="finetune",
    kinds={"llama.cpp", "mlflow"},
    hooks={END_MLFLOW_RUN},
    deps=[gguf_model],
    description="Held-out questions (validation split) and the tenant's own hand-written ones, answered by "
    "llama.cpp from the base and the tuned GGUF, each closed-book and with the tenant's retrieval; exact "
    "match, contains-the-answer and token F1; the gate reads the retrieval-grounded F1; a registered model "
    "version in MLflow.",
)
def qa_eval(context: dg.AssetExecutionContext, finetune: FineTuneResource,
            object_store: ObjectStoreResource) -> dg.MaterializeResult:
    from datacreek_assets.defs.retrieval.assets import retrieval_dir
    from datacreek_assets.finetune.pipeline import eval_sets, evaluate, read_latest, read_sft, read_tenant_questions
    from datacreek_assets.finetune.training import write_json_atomic
    from datacreek_assets.retrieval.index import load_current

    tenant = validate_tenant_id(context.partition_key)
    tenant_dir = finetune.tenant_dir(tenant)
    latest = read_latest(tenant_dir)
    manifest = json.loads((tenant_dir / "gguf" / latest["run_key"] / "manifest.json").read_text())
    store = object_store.for_tenant(tenant)
    data = read_sft(store)
    index = load_current(retrieval_dir(finetune, tenant), tenant)
    if index is None:
        raise dg.Failure(f"tenant {tenant} has no retrieval index: materialize retrieval_index first")
    report = evaluate(latest, manifest, eval_sets(data, finetune.eval_questions, read_tenant_questions(store)), index)
    report["dataset_version"] = data.version
    report["margin"] = finetune.eval_margin
    report["passed"] = report["tuned"]["f1"] >= report["base"]["f1"] + finetune.eval_margin
    drift_meta = {}
    if report["passed"]:
        drift_meta = move_drift_reference(store, context.run.tags.get(DETECTED_AT_TAG))
    tracking = finetune.tracking(tenant)
    run_id = latest["mlflow_run_id"]
    tracking.log_metric(run_id, "reward_avg", report["tuned"]["f1"])
    for set_name, sides in report["sets"].items():
        for side, scores in sides.items():
            for metric in ("exact_match", "contains", "f1"):
                tracking.log_metric(run_id, f"{set_name}_{side}_{metric}", scores[metric])
    gate = report["sets"][report["gate_set"]]
    picture = eval_comparison_picture(
        {side.replace("_", " "): {"exact match": s["exact_match"], "contains answer": s["contains"], "token F1": s["f1"]}
         for side, s in gate.items()}, f"{tenant}: {report['gate_set']} questions")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "qa_eval.png").write_bytes(picture)
        tracking.log_artifact(run_id, Path(tmp) / "qa_eval.png", "pictures")
    tracking.finish(run_id)
    report["model_version"] = tracking.register(run_id, "gguf", tags={"qa_passed": str(report["passed"]).lower()})
    write_json_atomic(tenant_dir / "eval" / f"{latest['run_key']}.json", report)
    write_json_atomic(tenant_dir / "eval" / "latest.json", report)
    table = "\n".join(f"| {name} | {side.replace('_', ' ')} | {s['questions']} | {s['exact_match']:.3f} | "
                      f"{s['contains']:.3f} | {s['f1']:.3f} |"
                      for name, sides in report["sets"].items() for side, s in sides.items())
    return dg.MaterializeResult(
        metadata={
            "questions": report["tuned"]["questions"],
            "gate_set": report["gate_set"],
            "retrieval_decoding": report["decoding"],  # extractive: answers held to the passages, as served
            "base_exact_match": round(report["base"]["exact_match"], 4),
            "base_f1": round(report["base"]["f1"], 4),
            "tuned_exact_match": round(report["tuned"]["exact_match"], 4),
            "tuned_contains": round(report["tuned"]["contains"], 4),
            "tuned_f1": round(report["tuned"]["f1"], 4),
            "reward_avg": round(report["tuned"]["f1"], 4),
            "margin": finetune.eval_margin,
            "registered_model": f"{tracking.model_name} v{report['model_version']}",
            **mlflow_run_link(finetune, tracking, run_id),
            **drift_meta,
            "scores": dg.MetadataValue.md("| set | model, mode | questions | exact match | contains | F1 |\n"
                                          "|---|---|---|---|---|---|\n" + table),
            # the answers quote the tenant's documents: they stay in the report file, which erasure
            # rewrites, never in Dagster's append-only event log
            "examples": dg.MetadataValue.path(str(tenant_dir / "eval" / f"{latest['run_key']}.json")),
            "comparison": dg.MetadataValue.md(png_markdown(picture, "base vs tuned")),
        },
        data_version=dg.DataVersion(latest["run_key"]),
    )


def move_drift_reference(store, detected_at: str | None) -> dict:
    """A model that passed its gate was trained on the newest data: drift is measured from there on.
    For a drift-triggered retraining, the time from crossing the threshold to this point is returned."""
    if store.exists(LATEST_STATS_KEY):
        store.put(REFERENCE_KEY, store.get(LATEST_STATS_KEY))
    meta = {"drift_reference_moved": store.exists(LATEST_STATS_KEY)}
    if detected_at:
        meta["drift_to_release_s"] = round(time.time() - float(detected_at), 1)
    return meta


@dg.asset_check(asset=qa_eval, blocking=True,
                description="Release gate: with retrieval, the tuned model's mean token F1 beats the base model's by the "
                "margin (on the tenant's hand-written questions when it has them).")
def tuned_beats_base(context: dg.AssetCheckExecutionContext, finetune: FineTuneResource) -> dg.AssetCheckResult:
    tenant = validate_tenant_id(context.run.tags.get("dagster/partition", ""))
    report_path = finetune.tenant_dir(tenant) / "eval" / "latest.json"
    report = json.loads(report_path.read_text())
    gain = report["tuned"]["f1"] - report["base"]["f1"]
    return dg.AssetCheckResult(
        passed=bool(report["passed"]),  # the verdict qa_eval recorded (and acted on): computed once
        metadata={"gate_set": report["gate_set"], "base_f1": report["base"]["f1"], "tuned_f1": report["tuned"]["f1"],
                  "gain": round(gain, 4), "margin": report["margin"], "run_key": report["run_key"]})
