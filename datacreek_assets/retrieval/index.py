"""A tenant's retrieval index: its live chunks' vectors (read back from the feature store, fp8
dequantized) with their texts, searched exactly by inner product, and with the question's own
words (BM25, `lexical.py`) added to the vectors' scores when the question is given.

Exact search, not an approximate graph: a tenant's corpus is thousands to tens of thousands of
chunks, where one matrix-vector product over 384-d vectors takes about a millisecond (1.3 ms for
20,000 on one core) and returns the true top k. Embedding the question costs ~20 ms, so an ANN
graph's speed (0.04 ms) buys nothing a request notices, and it found 72 % of the true top 3
(bench/retrieval.py).
The index is one .npz file, written atomically under a name that is its content hash, so a
reader never sees a half-written index and an unchanged index is not written again.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datacreek_assets.tenancy import validate_tenant_id

DEFAULT_K = 3
# a question's BM25 scores, scaled to its best chunk's, count this much next to the cosine: on the
# demo's 109 hand-written questions the answer is in the top 3 for 0.991 against 0.963 for the
# vectors alone (README, "The question's words"; 0.3 ranked the top 3 alike)
LEXICAL_WEIGHT = 0.5


class RetrievalError(RuntimeError):
    pass


@dataclass(frozen=True)
class Passage:
    chunk_id: str
    doc_id: str
    text: str
    score: float


@dataclass
class RetrievalIndex:
    tenant_id: str
    chunk_ids: list[str]
    doc_ids: list[str]
    texts: list[str]
    vectors: np.ndarray  # (n, d) float32, unit length
    _lexical: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.tenant_id = validate_tenant_id(self.tenant_id)
        if not (len(self.chunk_ids) == len(self.doc_ids) == len(self.texts) == len(self.vectors)):
            raise RetrievalError("index columns differ in length")

    def __len__(self) -> int:
        return len(self.chunk_ids)

    @property
    def version(self) -> str:
        digest = hashlib.sha256(self.tenant_id.encode())
        for cid in self.chunk_ids:
            digest.update(cid.encode())
        digest.update(np.ascontiguousarray(self.vectors).tobytes())
        return digest.hexdigest()[:16]

    def search(self, query: np.ndarray, k: int = DEFAULT_K, exclude: set[str] | None = None,
               question: str | None = None) -> list[Passage]:
        """The k chunks most similar to a unit-length query vector, best first; with ``question``
        (the text the vector embeds), its BM25 scores count too (LEXICAL_WEIGHT)."""
        if not len(self):
            return []
        scores = self.vectors @ np.asarray(query, dtype=np.float32).reshape(-1)
        if question is not None:
            lexical = self.lexical().scores(question)
            best = float(lexical.max())
            if best > 0:
                scores = scores + LEXICAL_WEIGHT * lexical / best
        want = min(len(self), k + len(exclude or ()))
        top = np.argpartition(-scores, want - 1)[:want]
        top = top[np.argsort(-scores[top], kind="stable")]
        found = [Passage(self.chunk_ids[i], self.doc_ids[i], self.texts[i], float(scores[i])) for i in top
                 if not exclude or self.chunk_ids[i] not in exclude]
        return found[:k]

    def lexical(self):
        """The chunks' BM25 index, built on its first call (about 0.12 s per thousand chunks)."""
        if self._lexical is None:
            from datacreek_assets.retrieval.lexical import LexicalIndex

            self._lexical = LexicalIndex(self.texts)
        return self._lexical

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, tenant_id=np.array(self.tenant_id), chunk_ids=np.array(self.chunk_ids, dtype=str),
                 doc_ids=np.array(self.doc_ids, dtype=str), texts=np.array(self.texts, dtype=str),
                 vectors=self.vectors.astype(np.float32))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, tenant_id: str) -> "RetrievalIndex":
        """An index read back; it must be ``tenant_id``'s (a path mix-up is refused, not served)."""
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            owner = str(f["tenant_id"])
            if owner != validate_tenant_id(tenant_id):
                raise RetrievalError(f"the index belongs to tenant {owner!r}, not {tenant_id!r}")
            return cls(owner, [str(x) for x in f["chunk_ids"]], [str(x) for x in f["doc_ids"]],
                       [str(x) for x in f["texts"]], f["vectors"].astype(np.float32))


def build_index(tenant_id: str, feature_rows, chunks: list[dict]) -> tuple[RetrievalIndex, int]:
    """The index from the tenant's feature-store rows (embedding_hash, chunk_id, doc_id, vector_fp8,
    scale, deleted) and its live chunks; returns it and how many live vectors had no live chunk
    (a chunk deleted since the vectors were written: skipped, never served)."""
    from datacreek_assets.embeddings.fp8 import dequantize

    text_of = {c["chunk_id"]: c["text"] for c in chunks}
    live = feature_rows[~feature_rows["deleted"].astype(bool)] if len(feature_rows) else feature_rows.iloc[:0]
    known = live[live["chunk_id"].isin(text_of)].sort_values("chunk_id", kind="stable")
    if len(known):
        vectors = dequantize(list(known["vector_fp8"]), np.asarray(known["scale"], dtype=np.float32))
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    else:
        vectors = np.zeros((0, 384), dtype=np.float32)
    index = RetrievalIndex(tenant_id, [str(c) for c in known["chunk_id"]], [str(d) for d in known["doc_id"]],
                           [text_of[c] for c in known["chunk_id"]], vectors.astype(np.float32))
    return index, len(live) - len(known)


def write_index(index: RetrievalIndex, folder: Path) -> Path:
    """``<folder>/<version>.npz``, by rename; older files but the one before are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{index.version}.npz"
    if not path.exists():
        tmp = folder / f".{path.name}.tmp"
        tmp.write_bytes(index.to_bytes())
        os.replace(tmp, path)
    older = sorted((p for p in folder.glob("*.npz") if p != path), key=lambda p: p.stat().st_mtime)
    for stale in older[:-1]:  # the previous one stays for a reader that opened it a moment ago
        stale.unlink(missing_ok=True)
    os.utime(path)  # the newest file is the current one, also when it was written before
    return path


def read_index(path: Path, tenant_id: str) -> RetrievalIndex:
    try:
        return RetrievalIndex.from_bytes(Path(path).read_bytes(), tenant_id)
    except (OSError, ValueError, KeyError) as err:
        raise RetrievalError(f"cannot read the retrieval index {path}: {err}") from err


CURRENT = "current.json"


def publish(index: RetrievalIndex, folder: Path) -> Path:
    """Write the index and point ``current.json`` at it (by rename: readers see the old or the new)."""
    import json

    path = write_index(index, folder)
    tmp = folder / f".{CURRENT}.tmp"
    tmp.write_text(json.dumps({"tenant_id": index.tenant_id, "version": index.version, "file": path.name,
                               "chunks": len(index)}))
    os.replace(tmp, folder / CURRENT)
    return path


def _publish_without(folder: Path, tenant_id: str, doc_id: str) -> tuple[int, Path | None]:
    index = load_current(folder, tenant_id)
    if index is None:
        return 0, None
    keep = [i for i, d in enumerate(index.doc_ids) if d != doc_id]
    removed = len(index) - len(keep)
    if removed:
        index = RetrievalIndex(tenant_id, [index.chunk_ids[i] for i in keep], [index.doc_ids[i] for i in keep],
                               [index.texts[i] for i in keep], index.vectors[keep])
    return removed, publish(index, folder)


def hide_document(folder: Path, tenant_id: str, doc_id: str) -> int:
    """Delete: publish the current index without the document's passages (served answers stop
    quoting it at once); returns the passages hidden."""
    return _publish_without(folder, tenant_id, doc_id)[0]


def erase_document(folder: Path, tenant_id: str, doc_id: str) -> int:
    """Purge: as ``hide_document``, and every older file goes too (the previous one, kept for
    readers, holds the passages); returns the passages removed."""
    removed, current = _publish_without(folder, tenant_id, doc_id)
    for stale in folder.glob("*.npz") if current is not None else ():
        if stale != current:
            stale.unlink(missing_ok=True)
    return removed


def current_version(folder: Path) -> str | None:
    import json

    try:
        return json.loads((folder / CURRENT).read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def load_current(folder: Path, tenant_id: str) -> RetrievalIndex | None:
    """The tenant's published index, or None before the first one."""
    import json

    try:
        pointer = json.loads((folder / CURRENT).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise RetrievalError(f"unreadable {folder / CURRENT}: {err}") from err
    return read_index(folder / Path(pointer["file"]).name, tenant_id)
