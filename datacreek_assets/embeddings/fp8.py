"""8-bit floating point vectors (e4m3, as torch.float8_e4m3fn) with a per-vector scale.

Each vector is divided by max|v| / 448 (448 is e4m3's largest finite value),
cast to e4m3 and stored as 384 raw bytes; reading multiplies back by the scale.
"""

from __future__ import annotations

import numpy as np

E4M3_MAX = 448.0


def quantize(vectors: np.ndarray) -> tuple[list[bytes], np.ndarray]:
    import torch

    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    scales = (x.abs().amax(dim=1, keepdim=True) / E4M3_MAX).clamp(min=1e-12)
    q = (x / scales).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    return [row.tobytes() for row in q], scales.squeeze(1).numpy().astype(np.float32)


def dequantize(blobs: list[bytes], scales) -> np.ndarray:
    import torch

    if not blobs:
        return np.zeros((0, 0), dtype=np.float32)
    if len({len(blob) for blob in blobs}) > 1:  # one short blob would shift every row after it
        raise ValueError(f"fp8 vectors of different lengths: {sorted({len(blob) for blob in blobs})}")
    raw = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), -1)
    values = torch.from_numpy(raw.copy()).view(torch.float8_e4m3fn).to(torch.float32)
    return (values * torch.tensor(np.asarray(scales, dtype=np.float32)).unsqueeze(1)).numpy()
