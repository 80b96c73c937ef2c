import dagster as dg


def definitions() -> dg.Definitions:
    from datacreek_assets.defs.datasets.assets import sft_dataset

    return dg.Definitions(assets=[sft_dataset])
