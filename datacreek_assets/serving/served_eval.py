"""Scoring a tenant's served model as its clients get it: questions sent through the router with
the tenant's API key, answers scored against the references (exact match, contains, F1), with
and without retrieval, and what grounding cost each request."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import requests

from datacreek_assets.finetune.qa import QaScores


@dataclass
class ServedScores:
    mode: str  # "retrieval" or "closed"
    version: str  # the version that answered (X-Model-Version of the replies)
    scores: dict
    request_p50_ms: float
    request_p99_ms: float
    retrieval_p50_ms: float | None  # the router's own grounding work (embedding + search)
    retrieval_p99_ms: float | None
    foreign_chunks: int  # retrieved chunks that are not the tenant's (must stay 0)
    answers: list[str]


def score_served(url: str, key: str, questions: list[dict], retrieval: bool, version: str | None = None,
                 own_doc_ids: set[str] | None = None, max_tokens: int = 32,
                 progress=lambda done, total: None) -> ServedScores:
    """``questions``: {"question", "answer"} rows; ``version`` pins a live version (else routed);
    ``own_doc_ids``: the tenant's document ids, to count any retrieved chunk from elsewhere."""
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {key}", "X-Retrieval": "on" if retrieval else "off"})
    if version:
        session.headers["X-Model-Version"] = version
    answers, latencies, grounding, foreign, served = [], [], [], 0, set()
    for i, q in enumerate(questions):
        started = time.perf_counter()
        reply = session.post(f"{url.rstrip('/')}/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "user", "content": q["question"]}], "max_tokens": max_tokens, "temperature": 0.0})
        latencies.append(time.perf_counter() - started)
        reply.raise_for_status()
        body = reply.json()
        answers.append(body["choices"][0]["message"]["content"].strip())
        served.add(reply.headers.get("X-Model-Version", "?"))
        info = body.get("retrieval", {})
        if "ms" in info:
            grounding.append(info["ms"])
        if own_doc_ids is not None:
            foreign += sum(c["doc_id"] not in own_doc_ids for c in info.get("chunks", []))
        progress(i + 1, len(questions))
    scores = QaScores.of(answers, [q["answer"] for q in questions])

    def pct(values, p):
        return round(float(np.percentile(values, p)), 2) if values else None

    ms = [x * 1000 for x in latencies]
    return ServedScores("retrieval" if retrieval else "closed", ",".join(sorted(served)), asdict(scores),
                        pct(ms, 50), pct(ms, 99), pct(grounding, 50), pct(grounding, 99), foreign, answers)
