import dagster as dg


def definitions() -> dg.Definitions:
    from datacreek_assets.defs.streaming.assets import hot_graph, stream_keeps_up
    from datacreek_assets.defs.streaming.sensors import hot_stream_sensor

    return dg.Definitions(assets=[hot_graph], asset_checks=[stream_keeps_up], sensors=[hot_stream_sensor])
