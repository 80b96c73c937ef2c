"""The fine-tuning assets against real MLflow (SQLite store) and llama.cpp, on a tiny random Llama.

The release gate is exercised both ways, and a tenant's MLflow handle is shown not to reach
another tenant's runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from datacreek_assets.defs.finetune.assets import finetuned_adapter, gguf_matches_torch, gguf_model, qa_eval, \
    tuned_beats_base
from datacreek_assets.finetune.pipeline import FineTuneError, read_sft
from datacreek_assets.finetune.tracking import ForeignRun
from datacreek_assets.partitions import TENANTS_PARTITION
from resources.stores import CreditLedgerResource, FineTuneResource, MlflowTrackingResource, ObjectStoreResource
from tests.unit.test_finetune import FACTS, chats

ASSETS = [finetuned_adapter, gguf_model, qa_eval, gguf_matches_torch, tuned_beats_base]
TRAINING = {"ops": {"finetuned_adapter": {"config": {"epochs": 25, "learning_rate": 1e-2, "max_seq_len": 256,
                                                     "effective_batch": 4}}}}


def grounded_chats(models_dir: str, tenant: str, n: int = 48) -> list[dict]:
    """The tenant's retrieval index over one passage per fact, and chats asked over what it retrieves,
    as sft_dataset writes them (the evaluation retrieves the same passages for the same question)."""
    from pathlib import Path

    from datacreek_assets.embeddings.embedder import embed_texts
    from datacreek_assets.retrieval.index import RetrievalIndex, publish
    from datacreek_assets.retrieval.prompt import messages_for

    passages = [f"The {name} module {what}." for name, what in FACTS]
    index = RetrievalIndex(tenant, [f"c{i}" for i in range(len(FACTS))], [f"{name}.md" for name, _ in FACTS],
                           passages, embed_texts(passages))
    publish(index, Path(models_dir) / "tenants" / tenant / "retrieval")
    out = []
    for c in chats(n):
        question, answer = c["messages"][1]["content"], c["messages"][2]["content"]
        found = [p.text for p in index.search(embed_texts([question])[0], question=question)]
        out.append({**c, "messages": messages_for(question, found) + [{"role": "assistant", "content": answer}],
                    "question": question, "answer": answer})
    return out


def write_dataset(objects: ObjectStoreResource, tenant: str, models_dir: str) -> None:
    store = objects.for_tenant(tenant)
    records = [{**c, "id": f"r{i}"} for i, c in enumerate(grounded_chats(models_dir, tenant))]
    store.put("datasets/sft/v1/chat.jsonl", "\n".join(json.dumps(r) for r in records).encode() + b"\n")
    store.put_json("datasets/sft/v1/manifest.json", {"version": "v1", "template_sha": "t" * 64})
    store.put_json("datasets/sft/latest.json", {"version": "v1"})


@pytest.fixture
def stores(tmp_path):
    objects = ObjectStoreResource(backend="local", root=str(tmp_path / "objects"))

    def finetune(margin: float) -> FineTuneResource:
        return FineTuneResource(models_dir=str(tmp_path / "models"), base_cache_dir=str(tmp_path / "base"),
                                mlflow=MlflowTrackingResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                                              artifact_root=str(tmp_path / "artifacts")),
                                base_model="tiny-llama",
                                cpu_fallback="fp32", eval_margin=margin, eval_questions=8, threads=1)

    return objects, finetune, CreditLedgerResource(url=f"sqlite:///{tmp_path / 'ledger.db'}", heartbeat_s=0.5)


def run(tenant: str, objects, finetune, instance, ledger):
    instance.add_dynamic_partitions(TENANTS_PARTITION, [tenant])
    return dg.materialize(ASSETS, partition_key=tenant, instance=instance, run_config=TRAINING,
                          resources={"object_store": objects, "finetune": finetune, "mlflow": finetune.mlflow,
                                     "credit_ledger": ledger},
                          raise_on_error=False)


def check(result, name: str):
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation


def test_release_gate_passes_a_model_that_learned_and_blocks_one_that_did_not_beat_the_margin(stores, instance):
    objects, finetune, ledger = stores
    write_dataset(objects, "acme", finetune(0.0).models_dir)
    passing = run("acme", objects, finetune(0.05), instance, ledger)
    assert passing.success
    meta = passing.asset_materializations_for_node("qa_eval")[0].metadata
    assert meta["tuned_f1"].value >= meta["base_f1"].value + 0.05, meta
    assert check(passing, "gguf_matches_torch").passed and check(passing, "tuned_beats_base").passed
    tuned = passing.asset_materializations_for_node("finetuned_adapter")[0].metadata
    assert tuned["device"].value == "cpu" and not tuned["base_in_8bit"].value  # fp32 configured here
    # one MLflow run for the training and its evaluation, tagged with the Dagster run that made it,
    # named by every materialization of the chain, and ended when the chain was
    tracking = finetune(0.0).tracking("acme")
    [trained] = tracking.client.search_runs([tracking.experiment_id])
    assert trained.info.status == "FINISHED"
    assert trained.data.tags["dagster_run_id"] == passing.run_id
    assert trained.data.tags["dagster/partition"] == "acme"
    assert trained.data.tags["dagster/asset_key"] == "finetuned_adapter"
    for node in ("finetuned_adapter", "gguf_model", "qa_eval"):
        linked = passing.asset_materializations_for_node(node)[0].metadata
        assert linked["mlflow_run_id"].value == trained.info.run_id
        assert linked["mlflow_experiment"].value == "datacreek/acme"

    # the same tenant, an unreachable margin: the check fails and the run fails with it
    write_dataset(objects, "globex", finetune(0.0).models_dir)
    blocked = run("globex", objects, finetune(2.0), instance, ledger)
    assert not blocked.success
    assert not check(blocked, "tuned_beats_base").passed
    tracking = finetune(2.0).tracking("globex")
    [version] = tracking.client.search_model_versions(f"name='{tracking.model_name}'")
    assert version.tags["qa_passed"] == "false"  # registered, but never a release candidate


def test_mlflow_runs_are_scoped_to_their_tenant(stores, instance):
    objects, finetune, ledger = stores
    write_dataset(objects, "acme", finetune(0.0).models_dir)
    assert run("acme", objects, finetune(-1.0), instance, ledger).success
    acme, globex = finetune(0.0).tracking("acme"), finetune(0.0).tracking("globex")
    acme_run = acme.client.search_runs([acme.experiment_id])[0].info.run_id
    assert acme.run(acme_run).data.params["dataset_version"] == "v1"
    assert acme.experiment_id != globex.experiment_id
    for attempt in (lambda: globex.run(acme_run), lambda: globex.log_metric(acme_run, "reward_avg", 1.0),
                    lambda: globex.register(acme_run, "gguf"), lambda: globex.metric_history(acme_run, "val_loss")):
        with pytest.raises(ForeignRun):
            attempt()
    assert "reward_avg" in acme.run(acme_run).data.metrics
    # the same training materialized again resumes its finished checkpoint: its MLflow run keeps its
    # status and the Dagster run that made it (reopening is for a training whose process died)
    first = acme.run(acme_run)
    again = dg.materialize([finetuned_adapter], partition_key="acme", instance=instance, run_config=TRAINING,
                           resources={"object_store": objects, "finetune": finetune(-1.0),
                                      "mlflow": finetune(-1.0).mlflow, "credit_ledger": ledger})
    assert again.asset_materializations_for_node("finetuned_adapter")[0].metadata["mlflow_run_id"].value == acme_run
    assert acme.run(acme_run).info.status == first.info.status == "FINISHED"
    assert acme.run(acme_run).data.tags["dagster_run_id"] == first.data.tags["dagster_run_id"] != again.run_id
    with pytest.raises(ValueError):
        finetune(0.0).tracking("../acme")


def test_an_averaged_release_trains_each_seed_once_and_releases_the_mean_of_their_adapters(stores, instance):
    """average_seeds 2: two member trainings (seeds 0 and 1) and their averaged adapter, each a run key
    and an MLflow run of its own; the export, its llama.cpp check and the evaluation use the average.
    Materialized again, nothing is trained or averaged twice."""
    from datacreek_assets.finetune.pipeline import averaged_run_key, read_latest
    from datacreek_assets.finetune.training import STEP_OBSERVER

    objects, finetune, ledger = stores
    tuning = finetune(-1.0)  # the gate is not what is measured here
    write_dataset(objects, "initech", tuning.models_dir)
    config = {**TRAINING["ops"]["finetuned_adapter"]["config"], "max_steps": 4, "average_seeds": 2}
    run_config = {"ops": {"finetuned_adapter": {"config": config}}}
    instance.add_dynamic_partitions(TENANTS_PARTITION, ["initech"])
    resources = {"object_store": objects, "finetune": tuning, "mlflow": tuning.mlflow, "credit_ledger": ledger}
    observed = []  # what the CLI's progress bar is told (runner.materialize_tenant sets the observer)
    token = STEP_OBSERVER.set(lambda step, total, loss: observed.append((step, total)))
    try:
        result = dg.materialize(ASSETS, partition_key="initech", instance=instance, run_config=run_config,
                                resources=resources)
    finally:
        STEP_OBSERVER.reset(token)
    assert result.success and check(result, "gguf_matches_torch").passed
    assert observed == [(step, 8) for step in range(1, 9)]  # both members' steps, counted on
    meta = {k: v.value for k, v in result.asset_materializations_for_node("finetuned_adapter")[0].metadata.items()}
    members = meta["member_run_keys"].split(", ")
    assert meta["average_seeds"] == 2 and len(set(members)) == 2
    assert meta["lora_rank_averaged"] == 2 * 8 and meta["steps"] == 2 * 4
    member_losses = json.loads(meta["member_val_losses"])
    assert len(member_losses) == 2 and all(loss > 0 for loss in member_losses) and meta["val_loss"] > 0
    tenant_dir = tuning.tenant_dir("initech")
    latest = read_latest(tenant_dir)
    assert latest["run_key"] == meta["run_key"] == averaged_run_key(members)
    assert Path(latest["adapter_dir"]) == tenant_dir / "runs" / latest["run_key"] / "adapter"
    lineage = json.loads((tenant_dir / "runs" / latest["run_key"] / "lineage.json").read_text())
    assert lineage["dataset_version"] == "v1" and lineage["members"] == members  # erasure finds it by its data
    assert sorted(p.name for p in (tenant_dir / "runs").iterdir()) == sorted([*members, latest["run_key"]])
    assert result.asset_materializations_for_node("gguf_model")[0].metadata["run_key"].value == latest["run_key"]
    for node in ("gguf_model", "qa_eval"):
        assert result.asset_materializations_for_node(node)[0].metadata["mlflow_run_id"].value == meta["mlflow_run_id"]

    tracking = tuning.tracking("initech")
    runs = {r.info.run_id: r for r in tracking.client.search_runs([tracking.experiment_id])}
    assert len(runs) == 3 and {r.info.status for r in runs.values()} == {"FINISHED"}
    averaged = runs[meta["mlflow_run_id"]]
    assert averaged.data.params["average_seeds"] == "2" and averaged.data.params["member_run_keys"] == ",".join(members)
    assert set(averaged.data.params["member_mlflow_run_ids"].split(",")) == set(runs) - {averaged.info.run_id}
    assert averaged.data.metrics["val_loss"] == pytest.approx(meta["val_loss"], abs=1e-4)
    assert "reward_avg" in averaged.data.metrics  # qa_eval scored the averaged adapter's run

    written = {path: path.stat().st_mtime_ns for path in (tenant_dir / "runs" / latest["run_key"]).rglob("*")
               if path.name in ("averaged.json", "adapter_model.safetensors")}
    assert len(written) == 2

    def materialize_again():
        again = dg.materialize([finetuned_adapter], partition_key="initech", instance=instance,
                               run_config=run_config, resources=resources)
        return {k: v.value for k, v in again.asset_materializations_for_node("finetuned_adapter")[0].metadata.items()}

    again = materialize_again()
    assert again["run_key"] == latest["run_key"] and again["mlflow_run_id"] == averaged.info.run_id
    assert again["resumed_from_step"] == again["steps"] == 2 * 4  # each member resumed its finished checkpoint
    assert {path: path.stat().st_mtime_ns for path in written} == written  # and the average was not made again
    assert len(tracking.client.search_runs([tracking.experiment_id])) == 3

    # model GC deleted a member: it is trained again, and the average is made again from the members
    # there are now, under an MLflow run of its own (the old one describes a training that is gone)
    shutil.rmtree(tenant_dir / "runs" / members[1])
    rebuilt = materialize_again()
    assert rebuilt["run_key"] == latest["run_key"] and rebuilt["mlflow_run_id"] != averaged.info.run_id
    runs = {r.info.run_id: r for r in tracking.client.search_runs([tracking.experiment_id])}
    assert len(runs) == 5 and {r.info.status for r in runs.values()} == {"FINISHED"}
    member_runs = runs[rebuilt["mlflow_run_id"]].data.params["member_mlflow_run_ids"].split(",")
    assert member_runs[0] == averaged.data.params["member_mlflow_run_ids"].split(",")[0]  # member 0 reused
    assert member_runs[1] not in averaged.data.params["member_mlflow_run_ids"]


def test_the_run_end_hook_and_the_failure_sensor_end_only_what_the_failed_run_opened_in_its_tenant(stores, instance):
    """dagster-mlflow's hook on a failing step, with this project's resource under the key ``mlflow``:
    it ends the run that the Dagster run opened in its tenant's experiment, and no other. The failure
    sensor (for a step killed outright, which runs no hook) ends the same, and makes no experiments."""
    from datacreek_assets.defs.finetune.assets import mlflow_run_tags
    from datacreek_assets.defs.finetune.mlflow_runs import END_MLFLOW_RUN, mlflow_runs_of_failed_runs
    from datacreek_assets.partitions import tenant_asset

    _, finetune, _ = stores
    mlflow = finetune(0.0).mlflow
    acme, globex = mlflow.for_tenant("acme"), mlflow.for_tenant("globex")
    other_dagster_run = acme.start_run("same tenant, another Dagster run", {},
                                       tags={"dagster_run_id": "00000000-0000-0000-0000-000000000000"})

    @tenant_asset(hooks={END_MLFLOW_RUN})
    def exports_then_fails(context, mlflow: MlflowTrackingResource):  # (annotations are strings here)
        opened = mlflow.for_tenant(context.partition_key).start_run("opened", {}, tags=mlflow_run_tags(context))
        (tmp / "opened").write_text(opened)
        # another tenant's MLflow run carrying this Dagster run's id: not this partition's to end
        mlflow.for_tenant("globex").start_run("other tenant, same Dagster run", {}, tags=mlflow_run_tags(context))
        raise RuntimeError("the export broke after the run was opened")

    tmp = Path(mlflow.artifact_root)
    tmp.mkdir(parents=True, exist_ok=True)
    instance.add_dynamic_partitions(TENANTS_PARTITION, ["acme"])
    result = dg.materialize([exports_then_fails], partition_key="acme", instance=instance,
                            resources={"mlflow": mlflow}, raise_on_error=False)
    assert not result.success
    opened = acme.run((tmp / "opened").read_text())
    assert opened.info.status == "FAILED" and opened.data.tags["dagster_run_id"] == result.run_id
    assert acme.run(other_dagster_run).info.status == "RUNNING"
    [same_run_other_tenant] = globex.client.search_runs([globex.experiment_id])
    assert same_run_other_tenant.info.status == "RUNNING"
    for asset in (finetuned_adapter, gguf_model, qa_eval):  # the product's MLflow steps carry the hook
        assert END_MLFLOW_RUN in asset.hook_defs

    # what a step killed outright leaves RUNNING, the failure sensor ends: in the run's tenant only
    left = acme.start_run("opened, then the pod was lost", {}, tags={"dagster_run_id": result.run_id})
    [failure] = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.PIPELINE_FAILURE)
    context = dg.build_run_status_sensor_context(
        sensor_name=mlflow_runs_of_failed_runs.name, dagster_event=failure.dagster_event, dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id), resources={"mlflow": mlflow}).for_run_failure()
    assert mlflow_runs_of_failed_runs(context) is None
    assert acme.run(left).info.status == "FAILED"
    assert acme.run(other_dagster_run).info.status == "RUNNING"
    assert globex.run(same_run_other_tenant.info.run_id).info.status == "RUNNING"
    assert isinstance(mlflow_runs_of_failed_runs(context), dg.SkipReason)  # nothing left the second time
    # a tenant that never trained: nothing to end, and no experiment made for it by looking
    assert mlflow.end_runs_of("initech", result.run_id, "FAILED") == 0
    assert acme.client.get_experiment_by_name("datacreek/initech") is None


def test_a_tenant_without_a_dataset_gets_a_clear_error(stores, instance):
    objects, finetune, ledger = stores
    with pytest.raises(FineTuneError, match="materialize sft_dataset first"):
        read_sft(objects.for_tenant("initech"))
    result = run("initech", objects, finetune(0.0), instance, ledger)
    assert not result.success
    assert not (finetune(0.0).tenant_dir("initech") / "latest.json").exists()


def test_a_fine_tune_that_runs_out_of_credits_ends_failed_quota_and_others_are_untouched(stores, instance):
    from datacreek_assets.billing.meter import FAILED_QUOTA, STATUS_TAG

    objects, finetune, ledger = stores
    ledger_resource = CreditLedgerResource(url=ledger.url, trial_credits=0.01, heartbeat_s=0.05)
    ledger = ledger_resource.ledger()
    for resource in ("gpu", "cpu"):  # 10 credits per second: the trial credit lasts a millisecond
        ledger.set_price("acme", 600.0, resource)
    ledger.top_up("globex", 100)
    for tenant in ("acme", "globex"):
        write_dataset(objects, tenant, finetune(0.0).models_dir)
    broke = run("acme", objects, finetune(-1.0), instance, ledger=ledger_resource)
    assert not broke.success
    assert instance.get_run_by_id(broke.run_id).tags[STATUS_TAG] == FAILED_QUOTA
    assert ledger.account("acme").balance < 0
    assert not (finetune(0.0).tenant_dir("acme") / "latest.json").exists()
    acme = finetune(0.0).tracking("acme")
    assert {r.info.status for r in acme.client.search_runs([acme.experiment_id])} == {"FAILED"}  # every attempt
    fine = run("globex", objects, finetune(-1.0), instance, ledger=ledger_resource)
    assert fine.success and STATUS_TAG not in instance.get_run_by_id(fine.run_id).tags
    [meter] = ledger.meters("globex")
    assert meter.status == "closed" and meter.resource == "cpu"  # no GPU here: the CPU fallback is metered


@pytest.mark.parametrize("field", ["gpu_precision", "cpu_precision"])
def test_an_invalid_precision_fails_once_before_any_training_or_billing(stores, instance, field):
    objects, finetune, ledger = stores
    write_dataset(objects, "hooli", finetune(0.0).models_dir)
    instance.add_dynamic_partitions(TENANTS_PARTITION, ["hooli"])
    bad = {"ops": {"finetuned_adapter": {"config": {**TRAINING["ops"]["finetuned_adapter"]["config"],
                                                    field: "fp16"}}}}
    result = dg.materialize([finetuned_adapter], partition_key="hooli", instance=instance, run_config=bad,
                            resources={"object_store": objects, "finetune": finetune(0.0), "mlflow": finetune(0.0).mlflow,
                                       "credit_ledger": ledger},
                            raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert f"invalid fine-tuning config: {field} must be one of" in failure.step_failure_data.error.message
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]  # retried on no rung
    # no checkpoints, heartbeat or MLflow run file: only the retrieval index the test wrote
    assert [p.name for p in finetune(0.0).tenant_dir("hooli").iterdir()] == ["retrieval"]
    assert ledger.ledger().meters("hooli") == []  # nothing was metered


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_trains_in_bf16_only_where_it_is_faster_and_says_so(stores, instance, native, monkeypatch):
    import datacreek_assets.cpu_features as cpu_features

    if native and not cpu_features.fast_bf16():
        pytest.skip("bfloat16 is slower than fp32 on this CPU (no AMX); the fallback case runs everywhere")
    monkeypatch.setattr(cpu_features, "fast_bf16", lambda: native)
    objects, finetune, ledger = stores
    write_dataset(objects, "hooli", finetune(0.0).models_dir)
    instance.add_dynamic_partitions(TENANTS_PARTITION, ["hooli"])
    config = {**TRAINING["ops"]["finetuned_adapter"]["config"], "max_steps": 2, "cpu_precision": "bf16"}
    result = dg.materialize([finetuned_adapter], partition_key="hooli", instance=instance,
                            run_config={"ops": {"finetuned_adapter": {"config": config}}},
                            resources={"object_store": objects, "finetune": finetune(0.0), "mlflow": finetune(0.0).mlflow,
                                       "credit_ledger": ledger})
    meta = result.asset_materializations_for_node("finetuned_adapter")[0].metadata
    assert meta["precision"].value == ("bf16" if native else "fp32")
    assert ("bfloat16 is slower than fp32" in meta["device_plan"].value) is not native
    [run_dir] = (finetune(0.0).tenant_dir("hooli") / "runs").iterdir()
    assert (run_dir / "lineage.json").exists()


def test_model_gc_stops_the_state_directory_growing_over_five_retrainings(stores, instance, tmp_path):
    """Five retrainings a month apart (the clock is moved by backdating the previous trainings'
    files): without GC every training stays; with model_gc after each, the tenant's folder holds
    the best, the newest and nothing older, and stops growing. Prints the sizes it measured."""
    import os
    import time

    from datacreek_assets.defs.retention.assets import model_gc
    from datacreek_assets.finetune.pipeline import read_latest
    from datacreek_assets.retention.model_gc import list_trainings, tree_bytes
    from resources.stores import ServingResource

    objects, finetune, ledger = stores
    tuning = finetune(-1.0)  # every training passes its gate: GC, not the gate, is measured here
    serving = ServingResource(ray_address="", http_port=0, store_url=f"sqlite:///{tmp_path / 'serving.db'}",
                              admin_token="t" * 24)
    write_dataset(objects, "gc-t", tuning.models_dir)
    instance.add_dynamic_partitions(TENANTS_PARTITION, ["gc-t"])
    tenant_dir = tuning.tenant_dir("gc-t")
    without_gc, with_gc = [], []
    for retraining in range(5):
        config = {"ops": {"finetuned_adapter": {"config": {"epochs": 2, "learning_rate": 1e-2, "max_seq_len": 256,
                                                           "effective_batch": 4, "max_steps": 4 + retraining}}}}
        result = dg.materialize([*ASSETS, model_gc], partition_key="gc-t", instance=instance, run_config=config,
                                resources={"object_store": objects, "finetune": tuning, "mlflow": tuning.mlflow, "credit_ledger": ledger,
                                           "serving": serving})
        assert result.success
        key = read_latest(tenant_dir)["run_key"]
        [training] = [t for t in list_trainings(tenant_dir) if t.run_key == key]
        without_gc.append((without_gc[-1] if without_gc else tree_bytes(tenant_dir) - training.bytes) + training.bytes)
        with_gc.append(tree_bytes(tenant_dir))
        month_ago = time.time() - 31 * 86400
        for folder in ("runs", "gguf", "eval"):
            for path in (tenant_dir / folder).rglob("*"):
                os.utime(path, (month_ago, month_ago))
    print("\nretraining  state bytes without GC  with model_gc")
    for i, (a, b) in enumerate(zip(without_gc, with_gc), 1):
        print(f"{i:>10}  {a:>22,}  {b:>13,}")
    assert len(list_trainings(tenant_dir)) <= 2  # the newest and, if another one, the best
    assert with_gc[4] <= max(with_gc[1:4]) * 1.05  # flat from the second retraining on
    assert without_gc[4] > 2 * with_gc[4]
