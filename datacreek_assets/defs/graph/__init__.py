import dagster as dg


def definitions() -> dg.Definitions:
    from datacreek_assets.defs.graph.assets import knowledge_graph
    from datacreek_assets.defs.graph.schedules import purge_job, purge_schedule

    return dg.Definitions(assets=[knowledge_graph], jobs=[purge_job], schedules=[purge_schedule])
