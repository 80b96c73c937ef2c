"""Does the topological signature help retrieval? Measured on documents of known topic.

The labelled set: the demo corpus's standard-library modules, each assigned
one topic by hand below. For every chunk (a query), the other chunks are
ranked by cosine similarity of embeddings alone, and by cosine plus
``weight`` x the estimated Jaccard similarity of their documents' signatures
(the "augmented" embedding). A retrieved chunk is relevant when its document
has the query's topic. recall@10 = relevant in the top 10 / min(10, relevant).
A control adds the same weight for "same document" alone: a signature gain no
larger than the control's comes from grouping by document, not from topology.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np

from datacreek_assets.topology.signature import jaccard

TOPICS = {
    "text": ["re", "string", "textwrap", "difflib", "html_parser", "pprint"],
    "data formats": ["json", "csv", "base64", "xml_etree_ElementTree", "email", "uuid", "ipaddress"],
    "files and archives": ["pathlib", "shutil", "tempfile", "zipfile", "tarfile", "gzip"],
    "concurrency and processes": ["threading", "queue", "asyncio", "subprocess", "socket", "http_client"],
    "numbers and randomness": ["decimal", "fractions", "statistics", "random", "secrets", "hashlib", "hmac", "heapq", "bisect"],
    "language and types": ["enum", "dataclasses", "typing", "abc", "copy", "operator", "functools", "itertools", "collections", "contextlib"],
    "tools and testing": ["unittest", "doctest", "pdb", "timeit", "argparse", "logging"],
    "dates and urls": ["datetime", "calendar", "urllib_parse", "sqlite3"],
}
TOPIC_OF = {module: topic for topic, modules in TOPICS.items() for module in modules}


def topic_of(doc_id: str) -> str | None:
    return TOPIC_OF.get(PurePosixPath(doc_id).stem)


def recall_at_10(vectors: np.ndarray, doc_ids: list[str], signatures: dict[str, bytes], weight: float,
                 same_document_only: bool = False) -> dict:
    topics = [topic_of(d) for d in doc_ids]
    keep = [i for i, t in enumerate(topics) if t is not None]
    if len(keep) < 11:
        return {"queries": len(keep), "recall_at_10": None}
    x = vectors[keep]
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    docs = [doc_ids[i] for i in keep]
    labels = np.array([topics[i] for i in keep])
    if weight:
        unique = sorted(set(docs))
        index = {d: k for k, d in enumerate(unique)}
        if same_document_only:  # control: the boost a document id alone would give, no topology
            jac = np.eye(len(unique))
        else:
            jac = np.array([[jaccard(signatures[a], signatures[b]) for b in unique] for a in unique])
        idx = np.array([index[d] for d in docs])
        sims = sims + weight * jac[np.ix_(idx, idx)]
    np.fill_diagonal(sims, -np.inf)
    recalls = []
    for q in range(len(keep)):
        relevant = (labels == labels[q]).sum() - 1
        if relevant == 0:
            continue
        top = np.argsort(-sims[q])[:10]
        recalls.append((labels[top] == labels[q]).sum() / min(10, relevant))
    return {"queries": len(recalls), "recall_at_10": round(float(np.mean(recalls)), 4)}


def compare(vectors: np.ndarray, doc_ids: list[str], signatures: dict[str, bytes], weight: float = 0.1) -> dict:
    base = recall_at_10(vectors, doc_ids, signatures, 0.0)
    augmented = recall_at_10(vectors, doc_ids, signatures, weight)
    control = recall_at_10(vectors, doc_ids, signatures, weight, same_document_only=True)
    diff = None
    if base["recall_at_10"] is not None:
        diff = round(augmented["recall_at_10"] - base["recall_at_10"], 4)
    return {"embedding_only": base["recall_at_10"], "with_signature": augmented["recall_at_10"],
            "difference": diff, "same_document_boost_control": control["recall_at_10"],
            "queries": base["queries"], "signature_weight": weight}
