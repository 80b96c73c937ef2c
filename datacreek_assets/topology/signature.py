"""512-bit MinHash signatures of persistence diagrams (datasketch).

A diagram's points are discretised on a fixed grid (radius bins of 0.02,
dimension kept, infinite deaths in their own bin), and the set of occupied
cells is MinHashed with 16 permutations of 32-bit hash values: 16 x 32 = 512
bits, stored as 64 bytes. The estimated Jaccard similarity of two signatures
is the share of equal slots.
"""

from __future__ import annotations

import math

import numpy as np

from datacreek_assets.topology.persistence import Diagram

NUM_PERM = 16  # 16 x 32-bit values = 512 bits
BIN = 0.02
SEED = 1


def diagram_tokens(diagram: Diagram, bin_width: float = BIN) -> set[bytes]:
    tokens = set()
    for dim, birth, death in diagram.points:
        d = "inf" if math.isinf(death) else str(int(death / bin_width))
        tokens.add(f"H{dim}:{int(birth / bin_width)}:{d}".encode())
    return tokens


def minhash_signature(diagram: Diagram) -> bytes:
    from datasketch import MinHash

    sketch = MinHash(num_perm=NUM_PERM, seed=SEED)
    for token in sorted(diagram_tokens(diagram)):
        sketch.update(token)
    return np.asarray(sketch.hashvalues, dtype=np.uint64).astype("<u4").tobytes()  # values are < 2**32


def jaccard(a: bytes, b: bytes) -> float:
    x, y = np.frombuffer(a, dtype="<u4"), np.frombuffer(b, dtype="<u4")
    return float((x == y).mean())
