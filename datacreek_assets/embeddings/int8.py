"""Int8 linear layers for the served question encoder: weights int8 per output channel,
activations int8 per row (each token's own scale), int32 products in `torch._int_mm`, rescaled
to fp32.

Why per row: a token's result never depends on the other tokens quantized with it; per-tensor
activation scales (torch's `quantize_dynamic`, now deprecated) dropped the cosine to fp32 to 0.93.

Only where the CPU multiplies int8 exactly: with VNNI or AMX, oneDNN's int8 GEMM is exact and
fast (one question embeds ~1.7x faster than fp32, since the weights read from memory per question
are a quarter). Without them it shifts the activations to unsigned and sums pairs of products in
16 bits, which saturate: the products are wrong, and slower than fp32 too. `int8_products_exact`
checks the worst case once per process; the encoder is not int8 where it fails, nor on CPUs
without VNNI or AMX at all (`cpu_features.native_int8`), where torch's products measured exact
but about 10x slower than fp32 (`question_encoder.question_encoder_precision`).
"""

from __future__ import annotations

import functools

import torch

LEVELS = 127  # symmetric int8: -127..127, so negation is exact


class Int8Linear(torch.nn.Module):
    """A frozen ``torch.nn.Linear`` with int8 weights and per-row int8 activations (inference on CPU)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / LEVELS
        # (in, out) contiguous: _int_mm's right operand
        self.register_buffer("weight", torch.round(weight / scale[:, None]).to(torch.int8).t().contiguous())
        self.register_buffer("weight_scale", scale)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else torch.zeros_like(scale)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()
        scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / LEVELS
        quantized = torch.round(rows / scale).to(torch.int8)
        out = torch._int_mm(quantized, self.weight).float() * (scale * self.weight_scale) + self.bias
        return out.reshape(*x.shape[:-1], out.shape[-1]).to(x.dtype)


@functools.lru_cache(maxsize=1)
def int8_products_exact(depth: int = 1536) -> bool:
    """Whether `torch._int_mm` computes int8 products exactly on this CPU: the worst case
    (every product +-127 x 127, ``depth`` of them summed, MiniLM's widest input) and a random one."""
    signs = torch.tensor([1, -1], dtype=torch.int8).repeat(depth // 2)
    worst = torch.stack([torch.full((depth,), LEVELS, dtype=torch.int8), signs * LEVELS, -torch.full(
        (depth,), LEVELS, dtype=torch.int8)])
    weights = torch.stack([torch.full((depth,), LEVELS, dtype=torch.int8), signs * LEVELS,
                           torch.full((depth,), -LEVELS, dtype=torch.int8)], dim=1)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(-LEVELS, LEVELS + 1, (5, depth), dtype=torch.int8, generator=generator)
    noise_weights = torch.randint(-LEVELS, LEVELS + 1, (depth, 7), dtype=torch.int8, generator=generator)
    for a, b in ((worst, weights), (noise, noise_weights)):
        if not torch.equal(torch._int_mm(a, b), a.long().mm(b.long()).int()):
            return False
    return True
