"""The served question encoder: MiniLM's forward for one unpadded sequence, written out.

A served request pays this on every call, so it is lean:
- One sequence needs no padding and no attention mask. Transformers' BertModel builds masks and
  output objects on every call; on an AVX2-only EPYC that Python was ~3 ms of a 16 ms question.
- Query, key and value are one linear layer (one matrix product instead of three).
- Its linear layers are the fastest kind measured on this CPU whose vectors stay next to fp32's
  (`question_encoder_precision`):
  - "int8" where the CPU multiplies int8 in hardware (VNNI or AMX) and exactly (`int8.py`; cosine
    to fp32 at least 0.9969, 1.7x fp32's questions per second on an AVX-512 VNNI CPU);
  - "fp16-weights" where fbgemm (torch's x86 GEMM library) runs: weights stored in float16,
    products and sums in float32. MiniLM's 42 MB of fp32 weights do not fit a 32 MB L3 cache, so
    every question streams them from memory; in float16 half as many bytes travel. Its vectors
    match fp32's to cosine 1.000000 on the 109 hand-written questions (bench/retrieval.py);
  - "fp32" elsewhere.
Batch work (chunks, SFT records, evaluation) embeds with `embedder.embed_texts`, the same on every
machine; its vectors and these agree (tests/unit/test_retrieval.py).
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from datacreek_assets import cpu_features
from datacreek_assets.embeddings.embedder import MAX_SEQ_LENGTH, model_dir
from datacreek_assets.embeddings.int8 import Int8Linear, int8_products_exact

LOG = logging.getLogger(__name__)

QUESTION_PRECISIONS = ("int8", "fp16-weights", "fp32")

Linear = Callable[[torch.Tensor], torch.Tensor]


@functools.lru_cache(maxsize=1)
def fp16_weights_available() -> bool:
    """Whether fbgemm's float16-weight linear runs here and computes what fp32 computes with the
    same weights rounded to float16 (fbgemm needs an x86 CPU with AVX2)."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(96, 1536, generator=generator), torch.randn(96, generator=generator)
    x = torch.randn(5, 1536, generator=generator)
    try:
        out = torch.ops.quantized.linear_dynamic_fp16(x, torch.ops.quantized.linear_prepack_fp16(weight, bias))
    except RuntimeError as error:  # no fbgemm kernel for this CPU
        LOG.info("fbgemm's float16-weight linear does not run here: %s", error)
        return False
    expected = F.linear(x, weight.half().float(), bias)
    return bool(torch.allclose(out, expected, rtol=1e-4, atol=1e-3))


def question_encoder_precision() -> str:
    """What `embed_question` runs on this machine by default: one of QUESTION_PRECISIONS."""
    if cpu_features.native_int8() and int8_products_exact():
        return "int8"
    if cpu_features.native_int8():
        LOG.info("this CPU's int8 products are not exact (oneDNN capped below VNNI): not int8")
    return "fp16-weights" if fp16_weights_available() else "fp32"


def check_precision(precision: str) -> str:
    if precision not in QUESTION_PRECISIONS:
        raise ValueError(f"question encoder precision must be one of {', '.join(QUESTION_PRECISIONS)}, "
                         f"not {precision!r}")
    return precision


def linear_layer(weight: torch.Tensor, bias: torch.Tensor, precision: str) -> Linear:
    """x -> x @ weight.T + bias, computed as ``precision`` says (weights of shape (out, in))."""
    weight, bias = weight.detach().contiguous(), bias.detach().contiguous()
    if check_precision(precision) == "fp32":
        return functools.partial(F.linear, weight=weight, bias=bias)
    if precision == "fp16-weights":
        packed = torch.ops.quantized.linear_prepack_fp16(weight, bias)
        return functools.partial(torch.ops.quantized.linear_dynamic_fp16, W_prepack=packed)
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0])  # Int8Linear quantizes a Linear's weights
    linear.weight.data, linear.bias.data = weight, bias
    return Int8Linear(linear)


class QuestionEncoder:
    """A BertModel's weights (MiniLM: 6 layers, 12 heads, absolute positions, erf GELU) run as
    one sequence's forward, mean-pooled and normalised as sentence-transformers does."""

    def __init__(self, bert, precision: str):
        embeddings, config = bert.embeddings, bert.config
        if config.hidden_act != "gelu" or getattr(config, "position_embedding_type", "absolute") != "absolute":
            raise ValueError("the question encoder runs BERT with erf GELU and absolute positions only")
        self.precision = precision
        self.heads = config.num_attention_heads
        self.word = embeddings.word_embeddings.weight.detach()
        self.position = embeddings.position_embeddings.weight.detach()
        self.token_type = embeddings.token_type_embeddings.weight.detach()[0]  # one segment
        self.embedding_norm = self._norm(embeddings.LayerNorm)
        self.layers = []
        for layer in bert.encoder.layer:
            attention = layer.attention.self
            fused = [attention.query, attention.key, attention.value]
            self.layers.append({
                "qkv": linear_layer(torch.cat([m.weight for m in fused]), torch.cat([m.bias for m in fused]), precision),
                "attention_out": self._linear(layer.attention.output.dense, precision),
                "attention_norm": self._norm(layer.attention.output.LayerNorm),
                "up": self._linear(layer.intermediate.dense, precision),
                "down": self._linear(layer.output.dense, precision),
                "output_norm": self._norm(layer.output.LayerNorm),
            })

    @staticmethod
    def _linear(module: torch.nn.Linear, precision: str) -> Linear:
        return linear_layer(module.weight, module.bias, precision)

    @staticmethod
    def _norm(module: torch.nn.LayerNorm):
        weight, bias, eps = module.weight.detach(), module.bias.detach(), module.eps
        return lambda x: F.layer_norm(x, (x.shape[-1],), weight, bias, eps)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (n,) -> the unit-length sentence vector (hidden,)."""
        n, hidden = ids.shape[0], self.word.shape[1]
        x = self.embedding_norm(self.word[ids] + self.position[:n] + self.token_type)
        for layer in self.layers:
            q, k, v = layer["qkv"](x).view(n, 3, self.heads, hidden // self.heads).permute(1, 2, 0, 3)
            attended = F.scaled_dot_product_attention(q, k, v).transpose(0, 1).reshape(n, hidden)
            x = layer["attention_norm"](layer["attention_out"](attended) + x)
            x = layer["output_norm"](layer["down"](F.gelu(layer["up"](x))) + x)
        return F.normalize(x.mean(dim=0), dim=0)


@functools.lru_cache(maxsize=4)
def load_question_encoder(threads: int, precision: str):
    """(tokenizer, encoder); an unknown ``precision`` fails before the model loads."""
    from transformers import AutoModel, AutoTokenizer

    check_precision(precision)
    torch.set_num_threads(threads)  # deliberate: a served request embeds on one core
    LOG.info("served questions are embedded with %s linear layers", precision)
    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    return tokenizer, QuestionEncoder(AutoModel.from_pretrained(model_dir()).eval(), precision)


def embed_question(text: str, threads: int = 1, precision: str | None = None) -> np.ndarray:
    """One question's unit-length float32 vector, as a served request computes it (``precision``
    None: `question_encoder_precision`'s)."""
    tokenizer, encoder = load_question_encoder(threads, precision or question_encoder_precision())
    ids = tokenizer(text, truncation=True, max_length=MAX_SEQ_LENGTH)["input_ids"]
    with torch.inference_mode():
        return encoder(torch.tensor(ids)).numpy()
