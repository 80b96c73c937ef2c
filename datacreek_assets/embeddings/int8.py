"""Int8 linear layers for the question encoder: weights int8 per output channel, activations int8
per row (each token's own scale), int32 accumulation in `torch._int_mm`, rescaled to fp32.

Why per row: a token's vector never depends on the other tokens or questions quantized with it,
so a question embeds the same alone or in a batch; per-tensor activation scales (torch's
`quantize_dynamic`, now deprecated) dropped the cosine to fp32 to 0.93. Why `_int_mm`: the integer
products are exact, so they are the same on every CPU; only the fp32 steps around them round
differently. On one core a MiniLM question embeds ~1.7x faster (the fp32 weights are read from
memory on every question; int8 weights are a quarter of that), at cosine >= 0.996 to fp32
(`python -m bench --only retrieval`).
"""

from __future__ import annotations

import copy

import torch

LEVELS = 127  # symmetric int8: -127..127, so negation is exact


class Int8Linear(torch.nn.Module):
    """A frozen ``torch.nn.Linear`` with int8 weights and per-row int8 activations (inference only)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / LEVELS
        # (in, out) contiguous: _int_mm's right operand
        self.register_buffer("weight", torch.round(weight / scale[:, None]).to(torch.int8).t().contiguous())
        self.register_buffer("weight_scale", scale)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else torch.zeros(len(scale))
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()
        scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / LEVELS
        quantized = torch.round(rows / scale).to(torch.int8)
        out = torch._int_mm(quantized, self.weight).float() * (scale * self.weight_scale) + self.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


def quantize_linears(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` (in eval mode) with every Linear replaced by an Int8Linear."""
    quantized = copy.deepcopy(model).eval()
    for module in list(quantized.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, Int8Linear(child))
    return quantized
