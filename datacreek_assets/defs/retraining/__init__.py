import dagster as dg


def definitions() -> dg.Definitions:
    from datacreek_assets.defs.retraining.sensors import embedding_drift_sensor, purged_data_retrain_sensor, retrain_job

    return dg.Definitions(jobs=[retrain_job], sensors=[embedding_drift_sensor, purged_data_retrain_sensor])
