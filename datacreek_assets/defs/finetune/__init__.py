import dagster as dg


def definitions() -> dg.Definitions:
    from datacreek_assets.defs.finetune.assets import (
        finetuned_adapter, gguf_matches_torch, gguf_model, qa_eval, tuned_beats_base,
    )
    from datacreek_assets.defs.finetune.mlflow_runs import mlflow_runs_of_canceled_runs, mlflow_runs_of_failed_runs

    return dg.Definitions(assets=[finetuned_adapter, gguf_model, qa_eval],
                          asset_checks=[gguf_matches_torch, tuned_beats_base],
                          sensors=[mlflow_runs_of_failed_runs, mlflow_runs_of_canceled_runs])
