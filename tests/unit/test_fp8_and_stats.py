import numpy as np
import pytest
import torch

from datacreek_assets.embeddings.embedder import MODEL_ID, embedding_hash
from datacreek_assets.embeddings import fp8, stats
from datacreek_assets.embeddings.fp8 import E4M3_MAX, dequantize, quantize, rounding_weights
from datacreek_assets.embeddings.stats import recall_at_k, reference_statistics, top_k


def test_fp8_bytes_are_e4m3_bit_patterns():
    vectors = np.array([[448.0, 1.0, -2.0, 0.0]], dtype=np.float32)
    blobs, scales = quantize(vectors)
    assert scales[0] == pytest.approx(1.0)  # max |v| is already e4m3's max
    # e4m3: 1.0 = 0x38, -2.0 = 0xC0, 448 = 0x7E, 0 = 0x00
    assert list(blobs[0]) == [0x7E, 0x38, 0xC0, 0x00]
    assert list(blobs[0]) == list(torch.tensor(vectors[0]).to(torch.float8_e4m3fn).view(torch.uint8).numpy())


def test_round_trip_error_is_within_e4m3_precision():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(200, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    blobs, scales = quantize(vectors)
    assert all(len(b) == 384 for b in blobs)
    back = dequantize(blobs, scales)
    # 3 mantissa bits: relative error at most 2^-4 of each value (values above the subnormal range)
    rel = np.abs(back - vectors) / np.maximum(np.abs(vectors), scales[:, None] * 2.0**-6)
    assert rel.max() <= 2.0**-4 + 1e-6
    assert np.allclose(np.abs(vectors).max(axis=1) / scales, E4M3_MAX)


def test_embedding_hash_is_model_and_normalised_text():
    assert embedding_hash("Hello   world") == embedding_hash("Hello world\n")
    assert embedding_hash("Hello world") != embedding_hash("hello world")
    assert embedding_hash("x") != embedding_hash("x", model_id=MODEL_ID + "-v2")


def test_top_k_and_recall():
    points = np.array([[1, 0], [0.99, 0.1], [0, 1], [0.1, 0.99], [-1, 0]], dtype=np.float32)
    assert top_k(points, 1)[:, 0].tolist() == [1, 0, 3, 2, 2]  # [-1, 0] is closest to [0, 1] (cos 0)
    assert recall_at_k(points, points, k=2) == 1.0
    shuffled = points[[4, 3, 2, 1, 0]]
    assert recall_at_k(points, shuffled, k=1) < 1.0


def test_reference_statistics_are_deterministic_and_bounded():
    vectors = np.random.default_rng(2).normal(size=(3000, 8)).astype(np.float32)
    a, b = reference_statistics(vectors), reference_statistics(vectors)
    assert a["sample"].shape == (2048, 8) and int(a["n"]) == 3000  # the sample is bounded
    assert float(a["bandwidth"]) > 0
    assert np.array_equal(a["sample"], b["sample"])
    assert np.allclose(a["centroid"], vectors.mean(axis=0))


def test_vectors_of_different_lengths_are_refused_not_shifted():
    blobs, scales = quantize(np.ones((2, 384), dtype=np.float32))
    with pytest.raises(ValueError, match="different lengths"):
        dequantize([blobs[0], blobs[1][:-1]], scales)


def low_rank_vectors(n: int = 500, dims: int = 64, rank: int = 8) -> np.ndarray:
    """Vectors that vary mostly in a few directions, as sentence embeddings do."""
    rng = np.random.default_rng(3)
    return (rng.normal(size=(n, rank)) @ rng.normal(size=(rank, dims)) + 0.05 * rng.normal(size=(n, dims))).astype(np.float32)


def test_isotropic_weights_round_each_value_to_nearest():
    vectors = np.random.default_rng(4).normal(size=(50, 384)).astype(np.float32)
    assert quantize(vectors, np.eye(384))[0] == quantize(vectors)[0]


def test_error_feedback_moves_the_error_to_where_the_vectors_do_not_vary():
    vectors = low_rank_vectors()
    weights = rounding_weights(vectors)
    nearest, feedback = dequantize(*quantize(vectors)), dequantize(*quantize(vectors, weights))

    def weighted_error(back):
        error = back - vectors
        return float(np.einsum("ij,jk,ik->", error, weights, error))

    # the same bytes and scales as before: every value is an e4m3 value times the vector's scale
    blobs, scales = quantize(vectors, weights)
    assert np.allclose(scales, np.abs(vectors).max(axis=1) / E4M3_MAX)
    assert all(len(b) == 64 for b in blobs)
    assert weighted_error(feedback) < 0.3 * weighted_error(nearest)  # measured: 0.21 of it
    assert recall_at_k(vectors, feedback) > recall_at_k(vectors, nearest)  # measured: 0.998 against 0.983


def test_error_feedback_stays_inside_e4m3_range():
    # dimension 0 is rounded first, 270 -> 256; dimension 1 depends on it (weight 1.9) and takes
    # about +26 of its error: past 448, which must come back as e4m3's largest value, not as NaN
    weights = np.array([[4.0, 1.9], [1.9, 1.0]])
    rounded = fp8._round_with_feedback(torch.tensor([[270.0, 448.0]]), weights).to(torch.float32)
    assert rounded.tolist() == [[256.0, 448.0]]
    vectors = low_rank_vectors(n=100)
    back = dequantize(*quantize(vectors, rounding_weights(vectors)))
    assert np.isfinite(back).all()
    assert np.abs(back / np.abs(vectors).max(axis=1, keepdims=True)).max() <= 1.0 + 1e-6


def test_rounding_is_the_same_however_the_dimensions_are_stepped(monkeypatch):
    vectors = low_rank_vectors(n=60, dims=70)
    weights = rounding_weights(vectors)
    expected = np.frombuffer(b"".join(quantize(vectors, weights)[0]), dtype=np.uint8)

    def share_equal() -> float:
        # float32 sums in another order can tip a value at a rounding midpoint, and the rest of its
        # row after it; a step's errors left out change most of the bytes
        return float((np.frombuffer(b"".join(quantize(vectors, weights)[0]), dtype=np.uint8) == expected).mean())

    for columns in (1, 7, 64, 128):  # one at a time, uneven steps, one step for all
        monkeypatch.setattr(fp8, "COLUMNS_PER_STEP", columns)
        assert share_equal() > 0.99, columns
    monkeypatch.setattr(fp8, "ROWS_PER_BLOCK", 7)
    assert share_equal() > 0.99


def test_vectors_that_are_not_finite_do_not_spoil_the_weights():
    vectors = low_rank_vectors(n=200)
    spoiled = vectors.copy()
    spoiled[3] = np.nan
    spoiled[5, 2] = np.inf
    clean = np.delete(vectors, [3, 5], axis=0)
    assert np.allclose(rounding_weights(spoiled), rounding_weights(clean))
    assert np.isfinite(dequantize(*quantize(clean, rounding_weights(spoiled)))).all()
    assert np.array_equal(rounding_weights(np.zeros((3, 4))), np.eye(4))  # nothing to weigh by: plain rounding
    assert np.array_equal(rounding_weights(np.full((2, 4), np.nan)), np.eye(4))
    with pytest.raises(ValueError, match="finite"):
        quantize(vectors, np.full((64, 64), np.nan))


def test_rounding_weights_trust_few_vectors_little():
    one = np.zeros((1, 4), dtype=np.float32)
    one[0, 0] = 2.0
    weights = rounding_weights(one)  # second moments diag(4, 0, 0, 0), shrunk by 1 / 101 toward diag(1, 1, 1, 1)
    assert np.allclose(np.diag(weights), [4 / 101 + 100 / 101, 100 / 101, 100 / 101, 100 / 101])
    with pytest.raises(ValueError, match="non-empty"):
        rounding_weights(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="dimensions"):
        quantize(np.ones((2, 8), dtype=np.float32), np.eye(4))


def test_recall_of_many_vectors_is_measured_on_a_sample_in_blocks(monkeypatch):
    vectors = low_rank_vectors(n=300)
    noisy = vectors + 0.3 * np.random.default_rng(5).normal(size=vectors.shape).astype(np.float32)
    full = recall_at_k(vectors, noisy)
    rows = np.arange(0, 300, 7)
    assert np.array_equal(top_k(vectors, 10, rows), top_k(vectors, 10)[rows])
    monkeypatch.setattr(stats, "QUERY_BLOCK", 7)
    monkeypatch.setattr(stats, "RECALL_QUERIES", 120)
    sampled = recall_at_k(vectors, noisy)
    assert 0.0 < sampled < 1.0 and sampled != full  # a sample of the rows, so not the full figure
    assert abs(sampled - full) < 0.1
