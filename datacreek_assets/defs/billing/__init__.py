import dagster as dg


def definitions() -> dg.Definitions:
    from datacreek_assets.defs.billing.sensors import quota_sensor

    return dg.Definitions(sensors=[quota_sensor])
