import dagster as dg


def definitions() -> dg.Definitions:
    from datacreek_assets.defs.retrieval.assets import retrieval_index

    return dg.Definitions(assets=[retrieval_index])
