import dagster as dg


def definitions() -> dg.Definitions:
    from datacreek_assets.defs.topology.assets import mapper_graph, persistence_sketches, umap_lens

    return dg.Definitions(assets=[persistence_sketches, umap_lens, mapper_graph])
