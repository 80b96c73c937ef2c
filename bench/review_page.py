"""The curator's review page with 1,000 queued edges: server time per page.

Candidate: `/ui/edge_review` as served (FastAPI, in process), the page filtered and cut in SQL,
25 edges a page, pages and filters varied. Baseline: the same pages rendered from the whole queue
read per request and filtered in Python (what a page without the review store's queries does).
The notes give the candidate's server-time p50 and p95, as the app measures them (the issue's goal:
p95 ≤ 200 ms on 2 cores).
"""

from __future__ import annotations

import math
import random
import tempfile
from pathlib import Path

import numpy as np

from bench.harness import Comparison
from datacreek_assets.curation.queue import QueueItem
from datacreek_assets.curation.review_store import ReviewStore
from datacreek_assets.curation.web import HERE, curation_app, neighbourhood_svg

TENANT, EDGES, PER_PAGE = "bench-review", 1_000, 25
WORDS = "flows through returns raises contains implements accepts supports provides the a of module value".split()


def queue(n: int, seed: int = 3) -> tuple[list[QueueItem], dict[str, str], dict[str, list[list]]]:
    rng = random.Random(seed)
    entities = [f"Entity{i}" for i in range(400)]
    items, chunks, pictures = [], {}, {}
    for i in range(n):
        s, o = rng.sample(entities, 2)
        sentence = f"{s} {' '.join(rng.choices(WORDS, k=20))} {o}."
        chunk_id = f"c{i % 300}"
        chunks[chunk_id] = " ".join(rng.choices(WORDS, k=250))
        score = 10 ** rng.uniform(-3, -0.5)
        items.append(QueueItem(f"f{i}", s, rng.choice(["returns", "raises", "contains", "flows through"]), o,
                               sentence, f"doc{i % 40}.md", chunk_id, 0, (score, score / 2, 0.0, 0.0), score,
                               i < 20, rng.random() > 0.1, "" if i % 10 else "small eigengap",
                               round(rng.uniform(0.3, 1.0), 2),
                               ("structural",) + (("low_confidence",) if i % 7 == 0 else ())))
        pictures[f"f{i}"] = [[s, o, 2.0]] + [[s, rng.choice(entities), float(rng.randint(1, 5))] for _ in range(4)] + \
            [[o, rng.choice(entities), float(rng.randint(1, 5))] for _ in range(4)]
    items.sort(key=lambda item: -item.score)
    return items, chunks, pictures


_made: list[Path] = []


def teardown() -> None:
    import shutil

    for folder in _made:
        shutil.rmtree(folder, ignore_errors=True)


def comparisons(quick: bool = False) -> list[Comparison]:
    from fastapi.testclient import TestClient
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    folder = Path(tempfile.mkdtemp(prefix="bench-review-"))
    _made.append(folder)
    store = ReviewStore(f"sqlite:///{folder / 'curation.db'}")
    items, chunks, pictures = queue(200 if quick else EDGES)
    store.replace_queue(TENANT, "bench", items, chunks, pictures)
    _, key = store.issue_key(TENANT, "bench")
    app = curation_app(None, store, None, "bench-admin-token-000001")  # the page reads the store alone
    client = TestClient(app)
    client.headers["Authorization"] = f"Bearer {key}"
    pages = max(1, math.ceil(len(items) / PER_PAGE))
    rng = random.Random(0)
    asks = [{"page": rng.randint(1, pages)} for _ in range(30)] + [
        {"q": "entity1", "page": 1}, {"predicate": "returns", "page": 2}, {"min_delta": "0.01"},
        {"reason": "low_confidence"}, {"status": "all", "page": 3}] * 2
    templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                            trim_blocks=True, lstrip_blocks=True)

    def served() -> int:
        for ask in asks:
            assert client.get("/ui/edge_review", params={**ask, "per_page": PER_PAGE}).status_code == 200
        return len(asks)

    def whole_queue() -> int:
        for ask in asks:
            every = store.page(TENANT, 0, 100_000, "all").edges
            kept = [e for e in every if (ask.get("status") == "all" or e.decision is None)
                    and (not ask.get("q") or ask["q"] in f"{e.subject} {e.object} {e.sentence}".lower())
                    and (not ask.get("predicate") or e.predicate == ask["predicate"])
                    and e.delta_lambda >= float(ask.get("min_delta", 0))
                    and (not ask.get("reason") or ask["reason"] in e.reasons)]
            page = ask.get("page", 1)
            templates.get_template("edge_review.html").render(
                tenant=TENANT, curator="bench", edges=kept[(page - 1) * PER_PAGE:page * PER_PAGE], total=len(kept),
                page=page, pages=pages, filters={"status": "open", "q": "", "predicate": "", "min_delta": "",
                                                 "reason": "", "per_page": PER_PAGE},
                predicates=sorted({e.predicate for e in every}), per_pages=(PER_PAGE,), previous=None, next=None,
                picture=neighbourhood_svg, first=(page - 1) * PER_PAGE)
        return len(asks)

    def notes() -> str:
        ms = np.array(app.state.page_ms)
        return (f"server time over {len(ms)} pages of a {len(items)}-edge queue: p50 {np.percentile(ms, 50):.1f} ms, "
                f"p95 {np.percentile(ms, 95):.1f} ms, max {ms.max():.1f} ms (goal: p95 ≤ 200 ms)")

    return [Comparison(name=f"review page, {len(items)} queued edges", candidate=served, baseline=whole_queue,
                       unit="pages", repeats=1 if quick else 3, notes=notes)]
