"""Extractive decoding: a grounded answer is a span of its passages, or "Not in the documents.".

The grounded prompt asks for "the shortest exact phrase from the context"; a 135M model follows
that most of the time and otherwise writes a plausible phrase that is nowhere in the passages.
Greedy decoding here takes, at each step, the most likely of the model's top tokens that keeps
the answer a span of the passages (ASCII case and runs of whitespace aside) or a beginning of
NOT_IN_DOCUMENTS. The turn may end on a whole span that says something (a word, or at least two
visible characters: an operator such as '+' or a tuple such as (',', ':') is an answer, a lone "."
is not), or on the whole refusal. When no top token goes on, an answer begun ends there (a
beginning of the refusal is finished first), even a lone "(": the tokens said stay said, and "("
is less wrong than "(Not in the documents."; with nothing said yet, the answer is the refusal.
The same choice serves evaluation (`llama_greedy`'s ``choose``) and serving (a llama.cpp logits
processor at temperature 0), so a client gets what was measured.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from datacreek_assets.retrieval.prompt import NOT_IN_DOCUMENTS, as_prompted

TOP_TOKENS = 64  # candidates looked at per step, most likely first
_SPACE = re.compile(rb"\s+")


def _normal(text: bytes) -> bytes:
    return _SPACE.sub(b" ", text).lower()


_REFUSAL = _normal(NOT_IN_DOCUMENTS.encode())


def _context(passages: list[str]) -> bytes:
    """The passages as the model reads them, joined by a byte no answer holds: a span never runs
    from one passage into the next."""
    return b"\x00".join(_normal(as_prompted(p).encode()) for p in passages)


def _fits(text: bytes, context: bytes) -> bool:
    return not text or text in context or _REFUSAL.startswith(text)


def says_something(answer: str) -> bool:
    """A word, or at least two visible characters (an operator or a literal such as '/')."""
    return any(ch.isalnum() for ch in answer) or sum(not ch.isspace() for ch in answer) >= 2


def is_span(answer: str, passages: list[str]) -> bool:
    """``answer`` says something and is a span of one of the passages (ASCII case and runs of
    whitespace aside) or a beginning of NOT_IN_DOCUMENTS (an answer cut by max_tokens)."""
    return says_something(answer) and _fits(_normal(answer.encode()).strip(), _context(passages))


class SpanConstraint:
    """One answer's decoding. ``token_bytes``: a token id's text as UTF-8 bytes (a token may
    hold part of a character); ``end_ids``: the tokens that end the turn, the one to end with
    first; ``refusal_ids``: NOT_IN_DOCUMENTS as the model's tokens."""

    def __init__(self, passages: list[str], token_bytes: Callable[[int], bytes], end_ids: list[int],
                 refusal_ids: list[int], top: int = TOP_TOKENS):
        self.context = _context(passages)
        self.refusal = _REFUSAL
        self.token_bytes = token_bytes
        self.end = end_ids[0]
        self.end_ids = set(end_ids)
        self.refusal_ids = list(refusal_ids)
        self.top = top
        self.forced: list[int] = []  # the rest of NOT_IN_DOCUMENTS, once the answer is to be that

    def fits(self, answer: bytes) -> bool:
        return _fits(_normal(answer).lstrip(), self.context)

    def pick(self, logits: np.ndarray, generated: list[int]) -> int:
        """The next token after ``generated`` (this answer's tokens so far), given its ``logits``."""
        if self.forced:
            return self.forced.pop(0)
        answer = b"".join(self.token_bytes(t) for t in generated)
        text = _normal(answer).strip()
        if text == self.refusal:
            return self.end
        # the turn ends on a whole span that says something: not on "Not in the", a beginning of
        # the refusal, nor on a lone "("
        complete = says_something(answer.decode("utf-8", "ignore")) and text in self.context
        top = np.argpartition(logits, -self.top)[-self.top:] if len(logits) > self.top else np.arange(len(logits))
        for token in top[np.argsort(-logits[top], kind="stable")]:
            token = int(token)
            if token in self.end_ids:
                if complete:
                    return token
                continue
            piece = self.token_bytes(token)
            if not piece or (not text and not piece.strip()):  # no answer opens with blanks
                continue
            if self.fits(answer + piece):
                return token
        if complete:
            return self.end
        if text:  # an answer has begun: a beginning of the refusal is finished, anything else ends
            # here (appending the refusal to "'/'" made "'/'Not in the documents.")
            for said in range(1, len(self.refusal_ids)):
                if _normal(b"".join(map(self.token_bytes, self.refusal_ids[:said]))).strip() == text:
                    self.forced = self.refusal_ids[said + 1:]
                    return self.refusal_ids[said]
            return self.end
        self.forced = self.refusal_ids[1:]  # nothing said yet: the refusal, whole
        return self.refusal_ids[0]


def for_llama(llm, passages: list[str]) -> SpanConstraint:
    """A constraint for a llama_cpp.Llama with a ChatML vocabulary (SmolLM2's)."""
    cache: dict[int, bytes] = {}

    def token_bytes(token: int) -> bytes:
        if token not in cache:
            cache[token] = llm.detokenize([token])
        return cache[token]

    im_end = llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
    ends = [t for t in ([im_end[0]] if len(im_end) == 1 else []) + [llm.token_eos()] if t >= 0]
    return SpanConstraint(passages, token_bytes, ends, llm.tokenize(NOT_IN_DOCUMENTS.encode(), add_bos=False))


def logits_processor(llm, passages: list[str]):
    """For `Llama.create_chat_completion(logits_processor=[...], temperature=0)`: every logit but
    the chosen token's is set to -inf. llama.cpp calls it with the whole sequence so far; the
    first call's length is the prompt's."""
    constraint = for_llama(llm, passages)
    prompt_len: list[int] = []

    def process(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if not prompt_len:
            prompt_len.append(len(input_ids))
        token = constraint.pick(np.asarray(scores), [int(t) for t in input_ids[prompt_len[0]:]])
        out = np.full_like(scores, -np.inf)
        out[token] = 0.0
        return out

    return process
