import dagster as dg


def definitions() -> dg.Definitions:
    from datacreek_assets.defs.curation.assets import edge_review_queue
    from datacreek_assets.defs.curation.sensors import curation_sensor

    return dg.Definitions(assets=[edge_review_queue], sensors=[curation_sensor])
