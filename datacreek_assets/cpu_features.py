"""What this CPU and torch do natively: for the bfloat16 and int8 choices, which are about speed
only (the embedder's, the question encoder's and the CPU training's), and for where compiled CPU
training is used (where inductor's kernels are the CPU's own). Exactness of int8 products is
`embeddings.int8.int8_products_exact`."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def fast_bf16() -> bool:
    """Whether bfloat16 is faster than fp32 here: AMX tiles, with oneDNN not capped below AVX-512
    (`ONEDNN_MAX_CPU_ISA=AVX2`, as the CI's AVX2 variant sets). A cap between AVX512_CORE and
    AVX512_CORE_AMX on such a CPU is not seen. Where oneDNN emulates bfloat16, embedding measured
    about 8x slower than fp32; with AVX-512 BF16 but no AMX (a 2-core Xeon, 2026-12-07) it is
    native and still slower: embedding 0.6x fp32, LoRA training 0.5x (README, "Chunk embeddings" and
    "Longer training"). Only the AMX-TILE flag is read, not the OS's permission for tile state."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported() and torch.cpu._is_amx_tile_supported())


@functools.lru_cache(maxsize=1)
def native_int8() -> bool:
    """Whether this CPU has int8 dot products in hardware (AVX-512 VNNI or AMX), which the served
    question encoder's int8 layers need to be fast. On an AVX2-only CPU (an AMD EPYC, 2026-12-06)
    torch's int8 products were exact but one question took p50 160 ms against fp32's 17 ms."""
    import torch

    return bool(torch.cpu._is_vnni_supported() or torch.cpu._is_amx_tile_supported())


@functools.lru_cache(maxsize=1)
def inductor_native_kernels() -> bool:
    """Whether torch.compile (inductor) generates the widest vector kernels this CPU has: AVX-512
    (or AMX) on such a CPU, AVX2 on a CPU without AVX-512. Compiled LoRA training is verified
    there, the same losses as eager (`test_compiled_layers_train_on_cpu_what_eager_layers_train`,
    on AMX Xeons and on an AVX2-only AMD EPYC). Held below the CPU's own, as
    `ATEN_CPU_CAPABILITY=avx2` holds an AVX-512 CPU for the CI's AVX2 variant, inductor's AVX2
    kernels gave NaN losses from the first step (torch 2.15); with `default` its unvectorised
    C++ did not compile."""
    import torch
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    isa = str(pick_vec_isa())  # follows ATEN_CPU_CAPABILITY; torch.cpu's checks ask the hardware
    return isa.startswith("avx512") or (isa == "avx2" and not torch.cpu._is_avx512_supported())
