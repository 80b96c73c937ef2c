import dagster as dg


def definitions() -> dg.Definitions:
    from datacreek_assets.defs.embeddings.assets import chunk_embeddings, embedding_features

    return dg.Definitions(assets=[chunk_embeddings, embedding_features])
