import dagster as dg


def definitions() -> dg.Definitions:
    from datacreek_assets.defs.ingest.assets import parsed_chunks, raw_documents

    return dg.Definitions(assets=[raw_documents, parsed_chunks])
