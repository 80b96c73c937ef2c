"""The text a store holds, decoded the way its files are written, for erasure scans: a marker
string hidden in a compressed parquet column or a UTF-32 numpy array would slip past a byte search."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path


def decoded_text(name: str, data: bytes) -> str:
    """``data`` as text, by its name: parquet as CSV, numpy archives and zip files member by member."""
    if name.endswith(".parquet"):
        import pandas as pd

        return pd.read_parquet(io.BytesIO(data)).to_csv()
    if name.endswith(".npz"):
        import numpy as np

        with np.load(io.BytesIO(data), allow_pickle=False) as archive:  # strings are stored as UTF-32
            return "\n".join(str(archive[member].tolist()) for member in archive.files)
    if name.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return "\n".join(decoded_text(member, archive.read(member)) for member in archive.namelist())
    return data.decode("utf-8", "replace")


def file_text(path: Path) -> str:
    return decoded_text(path.name, path.read_bytes())


def folder_text(folder: Path) -> str:
    return "\n".join(file_text(path) for path in sorted(Path(folder).rglob("*")) if path.is_file())


def object_store_text(objects) -> str:
    """Every object of the tenant's areas (documents and screened-out copies)."""
    return "\n".join(decoded_text(key, objects.get(key, area))
                     for area in ("tenant", "toxic") for key in objects.list(area=area))


def feature_store_text(views) -> str:
    """The offline rows and, for every hash they name, what the online store holds (read through
    Feast directly: the view's own reads hide deleted rows, and a scan must not)."""
    texts = []
    for view in views:
        rows = view.stored_rows()
        texts.append(rows.to_csv())
        if len(rows):
            online = view.store.get_online_features(
                features=[f"{view.view}:{view.value_column}", f"{view.view}:deleted"],
                entity_rows=[{"tenant_id": view.tenant_id, "embedding_hash": h} for h in rows["embedding_hash"]],
            ).to_dict()
            texts.append(repr(online))
    return "\n".join(texts)


def online_values_held(view, hashes: list[str]) -> int:
    """How many of ``hashes`` still have a value in the online store, deleted or not."""
    online = view.store.get_online_features(
        features=[f"{view.view}:{view.value_column}"],
        entity_rows=[{"tenant_id": view.tenant_id, "embedding_hash": h} for h in hashes]).to_dict()
    return sum(1 for value in online[view.value_column] if value)


def marked_module(module: str, marker: str) -> str:
    """A demo-corpus module as markdown with ``marker`` in every sentence (so every chunk, and every
    dataset record quoting one, holds it) and in an e-mail address (so a chunk is screened out to
    ingest-toxic/)."""
    from datacreek_assets.demo_corpus import module_text

    title, body = module_text(module)
    marked = body.replace(". ", f". The {marker} note. ")
    return f"# The {title} module\n\n{marked}\n\nWrite to {marker}.owner@example.com for access.\n"
