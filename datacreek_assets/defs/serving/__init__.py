import dagster as dg


def definitions() -> dg.Definitions:
    from datacreek_assets.defs.serving.assets import canary_release, production_release
    from datacreek_assets.defs.serving.sensors import canary_health_sensor

    return dg.Definitions(assets=[canary_release, production_release], sensors=[canary_health_sensor])
