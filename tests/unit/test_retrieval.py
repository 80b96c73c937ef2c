"""The retrieval index: built from feature-store rows, exact, owned by one tenant, published atomically."""

import numpy as np
import pandas as pd
import pytest

from datacreek_assets.embeddings.fp8 import quantize
from datacreek_assets.retrieval.index import (
    RetrievalError, RetrievalIndex, build_index, current_version, load_current, publish, read_index,
)
from datacreek_assets.retrieval.prompt import NOT_IN_DOCUMENTS, SYSTEM_PROMPT, messages_for, with_context


def unit_rows(n: int, d: int = 384, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def feature_rows(vectors: np.ndarray, deleted: set[int] = frozenset()) -> pd.DataFrame:
    blobs, scales = quantize(vectors)
    return pd.DataFrame({"embedding_hash": [f"h{i}" for i in range(len(vectors))],
                         "chunk_id": [f"c{i}" for i in range(len(vectors))],
                         "doc_id": [f"d{i // 4}" for i in range(len(vectors))],
                         "vector_fp8": blobs, "scale": scales, "deleted": [i in deleted for i in range(len(vectors))]})


def test_search_is_exact_top_k_over_fp8_vectors():
    vectors = unit_rows(200)
    chunks = [{"chunk_id": f"c{i}", "text": f"text {i}"} for i in range(200)]
    index, skipped = build_index("acme", feature_rows(vectors, deleted={5}), chunks[:-10])
    assert len(index) == 189 and skipped == 10  # one deleted, ten no longer live chunks
    assert "c5" not in index.chunk_ids
    for probe in (0, 17, 150):
        found = index.search(vectors[probe], k=3)
        assert found[0].chunk_id == f"c{probe}" and found[0].text == f"text {probe}"
        assert found[0].score > 0.99 and found[0].score >= found[1].score >= found[2].score
        exact = np.argsort(-(index.vectors @ vectors[probe]))[:3]
        assert [p.chunk_id for p in found] == [index.chunk_ids[i] for i in exact]
    assert [p.chunk_id for p in index.search(vectors[0], k=2, exclude={"c0"})][0] != "c0"


def test_an_index_belongs_to_one_tenant(tmp_path):
    vectors = unit_rows(10)
    index, _ = build_index("acme", feature_rows(vectors), [{"chunk_id": f"c{i}", "text": f"t{i}"} for i in range(10)])
    path = publish(index, tmp_path / "acme")
    assert read_index(path, "acme").chunk_ids == index.chunk_ids
    with pytest.raises(RetrievalError, match="belongs to tenant 'acme'"):
        read_index(path, "globex")  # a path mix-up is refused, never served
    with pytest.raises(ValueError):
        RetrievalIndex("../acme", [], [], [], np.zeros((0, 384), np.float32))
    with pytest.raises(RetrievalError):
        read_index(tmp_path / "missing.npz", "acme")


def test_publish_replaces_the_current_index_and_keeps_one_previous(tmp_path):
    folder = tmp_path / "retrieval"
    assert load_current(folder, "acme") is None and current_version(folder) is None
    versions = []
    for seed in range(3):
        index, _ = build_index("acme", feature_rows(unit_rows(6, seed=seed)),
                               [{"chunk_id": f"c{i}", "text": f"t{i}"} for i in range(6)])
        publish(index, folder)
        versions.append(index.version)
        assert current_version(folder) == index.version == load_current(folder, "acme").version
    assert len(set(versions)) == 3
    assert sorted(p.stem for p in folder.glob("*.npz")) == sorted(versions[1:])
    assert not list(folder.glob(".*tmp"))


def test_grounded_prompts():
    closed = messages_for("What is X?", None)
    assert closed == [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "What is X?"}]
    grounded = messages_for("What is X?", ["X is a thing.\n\nMore.", "Y is other."])
    assert grounded[1]["content"] == "Context:\n[1] X is a thing.\nMore.\n[2] Y is other.\n\nQuestion: What is X?"
    assert NOT_IN_DOCUMENTS in SYSTEM_PROMPT
    client = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
              {"role": "user", "content": "What is X?"}]
    served = with_context(client, ["X is a thing."])
    assert served[0]["role"] == "system" and served[1:3] == client[:2]
    assert served[-1]["content"].endswith("Question: What is X?") and client[-1]["content"] == "What is X?"
    assert with_context(client, []) == client


def test_a_served_question_is_embedded_close_to_its_fp32_vector():
    from datacreek_assets.embeddings.embedder import embed_question, embed_texts, question_encoder_precision

    questions = ["Which function serializes obj to a JSON formatted str?", "What is the default port of the server?",
                 "word " * 400]
    fallback = question_encoder_precision() == "fp32"  # a CPU without exact int8 products
    for question in questions:
        served, batch = embed_question(question), embed_texts([question])[0]
        assert abs(float(np.linalg.norm(served)) - 1) < 1e-5
        if fallback:
            assert np.allclose(served, batch, atol=1e-5)
        else:
            assert float(served @ batch) > 0.99  # measured >= 0.9969 on 109 hand-written questions


def _saturating_int_mm(a, b):
    """int8 products as a CPU without VNNI forms them (vpmaddubsw): activations shifted to
    unsigned, neighbouring products summed in 16 bits with saturation, then compensated."""
    shifted = (a.long() + 128)[:, :, None] * b.long()[None, :, :]  # (rows, depth, cols)
    pairs = (shifted[:, 0::2] + shifted[:, 1::2]).clamp(-32768, 32767)
    return (pairs.sum(dim=1) - 128 * b.long().sum(dim=0)).int()


def test_int8_products_are_checked_and_an_int8_linear_keeps_each_row_its_own(monkeypatch):
    import os
    import subprocess
    import sys

    import torch

    from datacreek_assets.embeddings.int8 import Int8Linear, int8_products_exact, quantize_linears

    # the check catches products that saturate (as without VNNI) and passes exact ones
    with monkeypatch.context() as patch:
        patch.setattr(torch, "_int_mm", _saturating_int_mm)
        assert int8_products_exact.__wrapped__() is False
        patch.setattr(torch, "_int_mm", lambda a, b: a.long().mm(b.long()).int())
        assert int8_products_exact.__wrapped__() is True

    # with oneDNN capped to AVX2 (a CPU without VNNI or AMX, on whatever CPU runs this), wherever
    # the check lets int8 in, an Int8Linear as wide as MiniLM's widest is still right
    probe = ("import torch; from datacreek_assets.embeddings.int8 import Int8Linear, int8_products_exact as e\n"
             "torch.manual_seed(0); linear = torch.nn.Linear(1536, 384); x = torch.randn(4, 1536) * 3\n"
             "exact = linear(x).detach(); error = (Int8Linear(linear)(x) - exact).abs().amax() / exact.abs().amax()\n"
             "print(e(), float(error))")
    capped = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"})
    assert capped.returncode == 0, capped.stderr[-2000:]
    exact_there, error_there = capped.stdout.split()
    assert exact_there in ("True", "False")
    if exact_there == "True":
        assert float(error_there) < 0.05
    if not int8_products_exact():
        return  # this CPU never runs Int8Linear (the encoder stays fp32, tested above)
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(3, 5, 64)
    x[0, 0] *= 1000  # one loud row must not change the others' scales
    exact, approx = linear(x).detach(), Int8Linear(linear)(x)
    assert approx.shape == exact.shape and approx.dtype == x.dtype
    error = (approx - exact).abs().amax(dim=-1) / exact.abs().amax(dim=-1)
    assert float(error.max()) < 0.05
    assert torch.equal(Int8Linear(linear)(x[1:]), approx[1:])  # a row's result is its own
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Sequential(torch.nn.Linear(8, 2)))
    assert [type(m).__name__ for m in quantize_linears(model).modules()].count("Int8Linear") == 2
