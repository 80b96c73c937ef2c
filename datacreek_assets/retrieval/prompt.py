"""The one grounded prompt: training records, evaluation and serving all build it here, so the
model is asked at serving exactly as it was taught."""

from __future__ import annotations

SYSTEM_PROMPT = ("You answer questions about the organisation's documents. Answer with the shortest exact "
                 "phrase from the context. If the context does not contain the answer, say: "
                 "Not in the documents.")
NOT_IN_DOCUMENTS = "Not in the documents."
MAX_PASSAGE_CHARS = 900  # about 200 MiniLM tokens: one chunk, never more


def grounded_question(question: str, passages: list[str]) -> str:
    """The user turn: numbered passages, then the question."""
    # a passage keeps its line structure (a member's name on its own line reads as its heading)
    context = "\n".join(f"[{i}] {as_prompted(p)}" for i, p in enumerate(passages, 1))
    return f"Context:\n{context}\n\nQuestion: {question}"


def as_prompted(passage: str) -> str:
    """A passage as the prompt holds it: blank lines dropped, spaces collapsed, cut to MAX_PASSAGE_CHARS."""
    return _compact(passage)[:MAX_PASSAGE_CHARS]


def _compact(passage: str) -> str:
    return "\n".join(" ".join(line.split()) for line in passage.splitlines() if line.strip())


def messages_for(question: str, passages: list[str] | None) -> list[dict]:
    """Chat messages for a question; ``passages`` None is closed-book (the question alone)."""
    user = question if passages is None else grounded_question(question, passages)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def with_context(messages: list[dict], passages: list[str]) -> list[dict]:
    """A client's chat with the retrieved passages put into its last user turn (serving)."""
    out = [dict(m) for m in messages]
    last = max((i for i, m in enumerate(out) if m["role"] == "user"), default=None)
    if last is None or not passages:
        return out
    out[last]["content"] = grounded_question(out[last]["content"], passages)
    if out[0]["role"] != "system":
        out.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
    return out
