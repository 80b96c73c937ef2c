import dagster as dg


def definitions() -> dg.Definitions:
    from datacreek_assets.defs.retention.assets import model_gc, nothing_kept_past_retention, retention_audit
    from datacreek_assets.defs.retention.schedules import retention_job, retention_schedule

    return dg.Definitions(assets=[retention_audit, model_gc], asset_checks=[nothing_kept_past_retention],
                          jobs=[retention_job], schedules=[retention_schedule])
