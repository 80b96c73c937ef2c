"""llama.cpp (through llama-cpp-python) as the judge of an exported GGUF, and as the QA engine.

`check_gguf` loads a GGUF (optionally base + LoRA adapter) and compares its logits with the
torch model's on one token sequence, teacher-forced: the prompt followed by torch's own greedy
continuation, so both engines see the same tokens at every position.

- An f32 file with an f32 KV cache is held to |Δlogit| <= 1e-3 everywhere.
- f16 is lossy: on a near-tie, which token wins depends on rounding, and that differs with the
  CPU's kernels (AVX2, AVX-512, AMX) in torch and in llama.cpp. So free-running greedy output is
  no invariant. Instead the error of f16 is measured on this model and sequence, by running torch
  with what f16 does to the computation (weights and matmul inputs rounded to f16: `f16_emulation`).
  The check then asks for llama.cpp's argmax to equal torch's at every position whose top-1/top-2
  margin exceeds twice that bound (no rounding of that size can flip it), and for the largest
  |Δlogit| to stay a small fraction of the logits' range there. A broken export (rotary layout,
  transposed projection, norm epsilon, adapter scale) moves logits by a sizeable part of their
  range and flips confident tokens; f16 rounding does neither.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

GGML_TYPE_F32 = 0
F32_TOLERANCE = 1e-3
# Measured on 20 random tiny models, merged f16 and base f16 + adapter, under ATen's default,
# AVX2 and AVX-512 kernels (test_the_f16_check_passes_random_models_of_20_seeds prints it):
# llama.cpp's f16 max |Δlogit| was 0.95-1.10 x the emulation's (SmolLM2-135M: 1.12, and 1.01
# with an adapter), so the emulation is the error. The bound doubles the largest ratio seen, for
# kernels not seen here.
F16_MEASURED_RATIO = 1.12
F16_BOUND_FACTOR = 2 * F16_MEASURED_RATIO
# Same runs: f16 moved logits by at most 0.8 % of their range (median 0.4 %, SmolLM2 0.2 %); broken exports by
# 2.5 % (norm epsilon 100x) to 99 % (rotary layout dropped), an adapter scaled by 1.1 by 5.7 %.
F16_MAX_RELATIVE_DIFF = 0.02


@dataclass
class LogitCheck:
    path: str
    lossy: bool  # judged as f16 (margin rule) or as f32 (strict)
    positions: int
    max_abs_logit_diff: float
    relative_diff: float  # max over positions of |Δlogit| / (max - min of torch's logits there)
    emulated_error: float  # f16 only: max |Δlogit| of torch's own f16 emulation
    error_bound: float  # the per-logit error allowed before a margin counts
    positions_checked: int  # positions whose torch top-1/top-2 margin exceeds 2 x error_bound
    argmax_mismatches: int  # of those, where llama.cpp's argmax differs from torch's
    passed: bool

    def metadata(self, prefix: str) -> dict:
        return {f"{prefix}_{k}": v for k, v in asdict(self).items() if k not in ("path", "lossy")}


@contextmanager
def open_llama(path: Path, lora_path: Path | None = None, n_ctx: int = 1024, threads: int = 2):
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), lora_path=str(lora_path) if lora_path else None, n_ctx=n_ctx,
                logits_all=True, n_threads=threads, n_threads_batch=threads, verbose=False, seed=0,
                type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    try:
        yield llm
    finally:
        llm.close()


def llama_logits(llm, token_ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(token_ids)
    return np.array(llm.scores[: len(token_ids)], dtype=np.float32)


def llama_greedy(llm, prompt_ids: list[int], max_new: int, stop_ids: set[int], choose=None) -> list[int]:
    """Greedy decoding; ``choose(logits, tokens so far)`` replaces the argmax (extractive decoding)."""
    llm.reset()
    llm.eval(prompt_ids)
    out: list[int] = []
    for _ in range(max_new):
        logits = llm.scores[llm.n_tokens - 1]
        token = int(np.argmax(logits)) if choose is None else choose(logits, out)
        if token in stop_ids:
            break
        out.append(token)
        llm.eval([token])
    return out


def torch_logits(model, token_ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([token_ids])).logits[0].float().numpy()


def torch_greedy(model, prompt_ids: list[int], max_new: int, stop_ids: set[int]) -> list[int]:
    import torch

    ids = list(prompt_ids)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new):
            token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            if token in stop_ids:
                break
            out.append(token)
            ids.append(token)
    return out


def teacher_forced_ids(model, prompt_ids: list[int], stop_ids: set[int], max_new: int = 16) -> list[int]:
    """The prompt followed by torch's greedy continuation: the sequence both engines are fed."""
    model.eval()
    return list(prompt_ids) + torch_greedy(model, prompt_ids, max_new, stop_ids)


def f16_emulation(model):
    """A copy of `model` computing as llama.cpp does with an f16 file: every matrix the exporter
    writes as f16 (all 2-D weights, not LoRA matrices, which stay f32) rounded to f16, and the
    inputs of those matmuls rounded to f16 too (ggml converts activations to the weight's type)."""
    import torch

    emulated = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, param in emulated.named_parameters():
            if param.ndim == 2 and "lora_" not in name:
                param.copy_(param.half().float())

    def round_input(_module, args):
        return (args[0].half().float(), *args[1:])

    for name, module in emulated.named_modules():
        if isinstance(module, torch.nn.Linear) and "lora_" not in name:
            module.register_forward_pre_hook(round_input)
    return emulated


def compare_logits(path: str, reference: np.ndarray, candidate: np.ndarray, emulated: np.ndarray | None) -> LogitCheck:
    """Judge `candidate` (llama.cpp) against `reference` (torch fp32) on the same positions.

    `emulated` is torch's f16 emulation for a lossy file, None for an f32 one."""
    diff = np.abs(candidate - reference)
    spread = reference.max(axis=1) - reference.min(axis=1)
    relative = float(np.max(diff.max(axis=1) / np.maximum(spread, 1e-12)))
    top2 = np.sort(reference, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    if emulated is None:
        emulated_error, bound = 0.0, F32_TOLERANCE
    else:
        emulated_error = float(np.max(np.abs(emulated - reference)))
        bound = F16_BOUND_FACTOR * emulated_error
    confident = margin > 2 * bound
    mismatches = int(np.sum(confident & (candidate.argmax(axis=1) != reference.argmax(axis=1))))
    max_diff = float(diff.max())
    if emulated is None:
        passed = max_diff <= F32_TOLERANCE and mismatches == 0
    else:
        passed = mismatches == 0 and relative <= F16_MAX_RELATIVE_DIFF
    return LogitCheck(path, emulated is not None, len(reference), max_diff, relative, emulated_error, bound,
                      int(confident.sum()), mismatches, bool(passed))


def check_gguf(model, path: Path, token_ids: list[int], lora_path: Path | None = None,
               emulation=None) -> LogitCheck:
    """llama.cpp's logits for `path` (+ `lora_path`) against `model`'s on `token_ids`.

    `emulation`: the f16 emulation of the model (`f16_emulation`) when the file is f16, else None
    (an f32 file, judged strictly). For base f16 + adapter, emulate the unmerged peft model, so
    the LoRA product stays f32 as llama.cpp computes it."""
    model.eval()
    reference = torch_logits(model, token_ids)
    emulated = torch_logits(emulation, token_ids) if emulation is not None else None
    with open_llama(path, lora_path) as llm:
        candidate = llama_logits(llm, token_ids)
    return compare_logits(str(path), reference, candidate, emulated)


def answer_questions(path: Path, tokenizer, prompts: list[list[dict]], max_new: int = 48,
                     lora_path: Path | None = None, grounding: list[list[str] | None] | None = None) -> list[str]:
    """Greedy answers from a GGUF for chat prompts (rendered with the model's chat template).
    ``grounding``: per prompt, the passages its answer is held to (extractive decoding, as served
    with retrieval), or None for free decoding."""
    from datacreek_assets.retrieval.extractive import for_llama

    stop = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end >= 0:
        stop.add(im_end)
    answers = []
    with open_llama(path, lora_path, n_ctx=2048) as llm:  # grounded prompts: three passages and the question
        for i, messages in enumerate(prompts):
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            passages = grounding[i] if grounding else None
            choose = for_llama(llm, passages).pick if passages else None
            answers.append(tokenizer.decode(llama_greedy(llm, ids, max_new, stop, choose),
                                            skip_special_tokens=True).strip())
    return answers
