"""The retrieval index: built from feature-store rows, exact, owned by one tenant, published atomically."""

import math

import numpy as np
import pandas as pd
import pytest

from datacreek_assets.embeddings.fp8 import quantize
from datacreek_assets.retrieval.index import (
    LEXICAL_WEIGHT, RetrievalError, RetrievalIndex, build_index, current_version, load_current, publish, read_index,
)
from datacreek_assets.retrieval.lexical import B, K1, LexicalIndex, terms
from datacreek_assets.retrieval.prompt import NOT_IN_DOCUMENTS, SYSTEM_PROMPT, messages_for, with_context
from tests.cpu_flags import cpu_flags


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


def test_bm25_weights_identifiers_whole_and_by_their_parts():
    texts = ["Use json.dumps to serialize obj.", "The object_pairs_hook takes priority over object_hook.",
             "dumps dumps dumps: a chunk that repeats one word, and is longer than the others by far here.", ""]
    lexical = LexicalIndex(texts)
    assert terms("In json.dumps, what is THE object_pairs_hook?") == [
        "json.dumps", "json", "dumps", "object_pairs_hook", "object", "pairs", "hook"]
    assert terms("csv.QUOTE_NONE") == ["csv.quote_none", "csv", "quote_none", "quote", "none"]
    # BM25 by its formula, computed here from the counts
    lengths = [len(terms(t)) for t in texts]
    mean = sum(lengths) / len(lengths)

    def bm25(term: str, row: int) -> float:
        n = sum(term in terms(t) for t in texts)
        tf = terms(texts[row]).count(term)
        idf = math.log(1 + (len(texts) - n + 0.5) / (n + 0.5))
        return idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * lengths[row] / mean)) if tf else 0.0

    for question in ("json.dumps", "which hook takes priority?", "dumps dumps", "what is the"):
        expected = [sum(bm25(t, row) for t in dict.fromkeys(terms(question))) for row in range(len(texts))]
        assert np.allclose(lexical.scores(question), expected, rtol=1e-5)
    assert lexical.scores("json.dumps").argmax() == 0 and lexical.scores("object_pairs_hook").argmax() == 1
    assert not lexical.scores("what is the").any()  # stopwords alone match nothing


def test_a_question_s_words_rerank_the_vectors_and_the_search_stays_exact():
    vectors = unit_rows(50, seed=3)
    texts = [f"filler passage {i} about nothing" for i in range(50)]
    texts[7] = "In csv, QUOTE_NONE instructs writer objects to never quote fields."
    index = RetrievalIndex("acme", [f"c{i}" for i in range(50)], ["d"] * 50, texts, vectors)
    query = vectors[2] + 0.8 * vectors[7]
    query /= np.linalg.norm(query)
    assert index.search(query, k=1)[0].chunk_id == "c2"  # the vectors alone
    question = "What does QUOTE_NONE tell csv writers?"
    found = index.search(query, k=3, question=question)
    assert found[0].chunk_id == "c7"  # its identifier puts the right chunk first
    lexical = index.lexical().scores(question)
    fused = index.vectors @ query + LEXICAL_WEIGHT * lexical / lexical.max()
    assert [p.chunk_id for p in found] == [f"c{i}" for i in np.argsort(-fused)[:3]]
    assert [p.score for p in found] == pytest.approx(sorted(fused, reverse=True)[:3], rel=1e-5)
    # excluded: the next three of the same fused ranking
    assert [p.chunk_id for p in index.search(query, k=3, question=question, exclude={"c7"})] == \
        [f"c{i}" for i in np.argsort(-fused)[1:4]]
    # no word in common: the vectors' order, unchanged
    assert [p.chunk_id for p in index.search(query, k=3, question="zebra?")] == \
        [p.chunk_id for p in index.search(query, k=3)]


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
    from datacreek_assets.embeddings.embedder import embed_texts
    from datacreek_assets.embeddings.question_encoder import (embed_question, fp16_weights_available,
                                                              question_encoder_precision)

    questions = ["Which function serializes obj to a JSON formatted str?", "What is the default port of the server?",
                 "word " * 400]  # truncated as the batch encoder truncates
    # each precision this CPU can run, the served one included; the written-out forward in fp32
    # is transformers' BertModel to float rounding
    least_cosine = {"fp32": None, "fp16-weights": 0.99999, "int8": 0.99}  # int8: >= 0.9969 measured, 109 questions
    precisions = {"fp32", question_encoder_precision()} | ({"fp16-weights"} if fp16_weights_available() else set())
    for precision in sorted(precisions):
        for question in questions:
            served, batch = embed_question(question, precision=precision), embed_texts([question])[0]
            assert served.dtype == np.float32 and served.shape == batch.shape
            assert abs(float(np.linalg.norm(served)) - 1) < 1e-5
            if least_cosine[precision] is None:
                assert np.allclose(served, batch, atol=1e-5), precision
            else:
                assert float(served @ batch) > least_cosine[precision], precision


def test_the_served_encoder_is_int8_only_with_int8_dot_products_in_hardware(monkeypatch):
    import platform

    from datacreek_assets import cpu_features
    from datacreek_assets.embeddings import question_encoder

    flags = cpu_flags()
    assert cpu_features.native_int8() == bool(flags & {"avx512_vnni", "amx_tile"})
    # fbgemm's float16-weight kernels run on every x86 CPU with AVX2 (and F16C, which they all have)
    if platform.machine() in ("x86_64", "AMD64") and {"avx2", "f16c"} <= flags:
        assert question_encoder.fp16_weights_available()
    if not flags & {"avx512_vnni", "amx_tile"}:  # as on the AVX2-only EPYC where int8 was 10x slower
        assert question_encoder.question_encoder_precision() == (
            "fp16-weights" if question_encoder.fp16_weights_available() else "fp32")
    # exact int8 products without the instructions (torch's, on an AVX2-only EPYC): not int8
    monkeypatch.setattr(cpu_features, "native_int8", lambda: False)
    assert question_encoder.question_encoder_precision() != "int8"
    with pytest.raises(ValueError, match="question encoder precision"):
        question_encoder.embed_question("What is X?", precision="int4")


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

    from datacreek_assets.embeddings.int8 import Int8Linear, int8_products_exact

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
        return  # this CPU never runs Int8Linear (the encoder is not int8, tested above)
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(3, 5, 64)
    x[0, 0] *= 1000  # one loud row must not change the others' scales
    exact, approx = linear(x).detach(), Int8Linear(linear)(x)
    assert approx.shape == exact.shape and approx.dtype == x.dtype
    error = (approx - exact).abs().amax(dim=-1) / exact.abs().amax(dim=-1)
    assert float(error.max()) < 0.05
    assert torch.equal(Int8Linear(linear)(x[1:]), approx[1:])  # a row's result is its own
