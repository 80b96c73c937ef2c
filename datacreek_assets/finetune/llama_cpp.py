"""llama.cpp (through llama-cpp-python) as the judge of an exported GGUF, and as the QA engine.

`verify_against_torch` loads a GGUF, evaluates the same token ids as the torch
model and compares: max |logit difference| (meaningful for f32 files with an f32
KV cache) and the greedy continuation (f16 must produce torch's tokens).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GGML_TYPE_F32 = 0


@dataclass
class Verification:
    path: str
    max_abs_logit_diff: float
    greedy_match: bool
    torch_tokens: list[int]
    llama_tokens: list[int]


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


def llama_greedy(llm, prompt_ids: list[int], max_new: int, stop_ids: set[int]) -> list[int]:
    llm.reset()
    llm.eval(prompt_ids)
    out: list[int] = []
    for _ in range(max_new):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
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


def verify_against_torch(model, path: Path, prompt_ids: list[int], stop_ids: set[int], max_new: int = 16,
                         lora_path: Path | None = None) -> Verification:
    """Compare a GGUF (optionally base + LoRA adapter) with the torch model on the same tokens."""
    model.eval()
    with open_llama(path, lora_path) as llm:
        diff = float(np.max(np.abs(llama_logits(llm, prompt_ids) - torch_logits(model, prompt_ids))))
        ours = llama_greedy(llm, prompt_ids, max_new, stop_ids)
    theirs = torch_greedy(model, prompt_ids, max_new, stop_ids)
    return Verification(str(path), diff, ours == theirs, theirs, ours)


def answer_questions(path: Path, tokenizer, prompts: list[list[dict]], max_new: int = 48,
                     lora_path: Path | None = None) -> list[str]:
    """Greedy answers from a GGUF for chat prompts (rendered with the model's chat template)."""
    stop = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end >= 0:
        stop.add(im_end)
    answers = []
    with open_llama(path, lora_path) as llm:
        for messages in prompts:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            answers.append(tokenizer.decode(llama_greedy(llm, ids, max_new, stop), skip_special_tokens=True).strip())
    return answers
