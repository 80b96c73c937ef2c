"""The project's embedder against sentence-transformers on the same offline model."""

import numpy as np

from datacreek_assets.embeddings.embedder import DIMENSION, embed_texts, model_dir

TEXTS = [
    "The json module provides functions for encoding and decoding JSON.",
    "Rivers",
    "Neo4j stores data as nodes and relationships. " * 30,  # longer than the 256-token limit
    "SQLite is a small and fast database engine.",
]


def test_matches_sentence_transformers_and_keeps_order():
    from sentence_transformers import SentenceTransformer

    ours = embed_texts(TEXTS, threads=1, token_budget=64)  # small budget: several batches
    reference = SentenceTransformer(str(model_dir()), device="cpu").encode(TEXTS, normalize_embeddings=True,
                                                                        show_progress_bar=False)
    assert ours.shape == (len(TEXTS), DIMENSION) and ours.dtype == np.float32
    cosine = (ours * reference).sum(axis=1)
    assert cosine.min() > 0.9999
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_empty_input():
    assert embed_texts([]).shape == (0, DIMENSION)
