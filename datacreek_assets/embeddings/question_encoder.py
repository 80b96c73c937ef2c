"""The served question encoder: MiniLM's forward for one unpadded sequence, written out.

A served request pays this on every call, so it is lean:
- One sequence needs no padding and no attention mask. Transformers' BertModel builds masks and
  output objects on every call; on an AVX2-only EPYC that Python was ~3 ms of a 16 ms question.
- Query, key and value are one linear layer (one matrix product instead of three).
- Its linear layers are the most precise kind that is fast on this CPU (`question_encoder_precision`):
  - "int8" where the CPU multiplies int8 in hardware (VNNI or AMX) and exactly (`int8.py`);
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

LOG = logging.getLogger(__name__)

PRECISIONS = ("int8", "fp16-weights", "fp32")

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


def choose_precision() -> str:
    """The served encoder's linear layers on this machine: one of PRECISIONS."""
    from datacreek_assets.embeddings.int8 import int8_products_exact

    if cpu_features.native_int8() and int8_products_exact():
        return "int8"
    if cpu_features.native_int8():
        LOG.info("this CPU's int8 products are not exact (oneDNN capped below VNNI): not int8")
    return "fp16-weights" if fp16_weights_available() else "fp32"


def linear_layer(weight: torch.Tensor, bias: torch.Tensor, precision: str) -> Linear:
    """x -> x @ weight.T + bias, computed as ``precision`` says (weights of shape (out, in))."""
    weight, bias = weight.detach().contiguous(), bias.detach().contiguous()
    if precision == "fp32":
        return functools.partial(F.linear, weight=weight, bias=bias)
    if precision == "fp16-weights":
        packed = torch.ops.quantized.linear_prepack_fp16(weight, bias)
        return functools.partial(torch.ops.quantized.linear_dynamic_fp16, W_prepack=packed)
    if precision == "int8":
        from datacreek_assets.embeddings.int8 import Int8Linear

        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        linear.weight.data, linear.bias.data = weight, bias
        return Int8Linear(linear)
    raise ValueError(f"question encoder precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


class QuestionEncoder:
    """A BertModel's weights (MiniLM: 6 layers, 12 heads, absolute positions, erf GELU) run as
    one sequence's forward, mean-pooled and normalised as sentence-transformers does."""

    def __init__(self, bert, precision: str):
        embeddings, config = bert.embeddings, bert.config
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
def load_question_encoder(threads: int = 1, precision: str | None = None):
    """(tokenizer, encoder): ``precision`` None is `choose_precision`'s."""
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)  # deliberate: a served request embeds on one core
    precision = precision or choose_precision()
    if precision not in PRECISIONS:
        raise ValueError(f"question encoder precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    LOG.info("served questions are embedded with %s linear layers", precision)
    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    return tokenizer, QuestionEncoder(AutoModel.from_pretrained(model_dir()).eval(), precision)


def question_encoder_precision(threads: int = 1) -> str:
    """What `embed_question` runs on this machine: one of PRECISIONS."""
    return load_question_encoder(threads)[1].precision


def embed_question(text: str, threads: int = 1, precision: str | None = None) -> np.ndarray:
    """One question's unit-length float32 vector, as a served request computes it."""
    tokenizer, encoder = load_question_encoder(threads, precision)
    ids = tokenizer(text, truncation=True, max_length=MAX_SEQ_LENGTH)["input_ids"]
    with torch.inference_mode():
        return encoder(torch.tensor(ids)).numpy()
