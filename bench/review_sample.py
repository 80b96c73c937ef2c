"""The judged sample of the review queue on the demo corpus: `python -m bench.review_sample` builds
the demo tenant's queue in process (``curation.offline_graph``: the ingest and graph assets' own
functions, no Neo4j) and prints the 50 edges to judge: every queued edge, then edges not queued
drawn at random (seed 0). With ``--judged FILE`` (JSON lines with fact_id and verdict
accept|reject, as `bench/review_sample_judged.jsonl` holds them) it prints the reject rates by
part of the queue. The verdicts are a person's reading, not computed: see that file's reasons."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from datacreek_assets.curation.offline_graph import demo_review_inputs
from datacreek_assets.curation.queue import DEFAULT_LIMIT, DEFAULT_TAU, scored_candidates, select

SAMPLE = 50


def sample(max_docs: int = 40) -> tuple[list, list]:
    inputs = demo_review_inputs(max_docs)
    scored = scored_candidates(inputs.mentions, inputs.facts, fact_pairs=inputs.fact_pairs,
                               chunk_texts=inputs.chunk_texts)
    queue = select(scored, DEFAULT_TAU, DEFAULT_LIMIT)
    queued = {q.fact_id for q in queue}
    rest = [s for s in scored if s.fact_id not in queued]
    return queue, sorted(random.Random(0).sample(rest, min(len(rest), max(0, SAMPLE - len(queue)))),
                         key=lambda s: -s.score)


def rates(queue: list, others: list, verdicts: dict[str, str]) -> dict[str, str]:
    def rate(items) -> str:
        judged = [verdicts[i.fact_id] for i in items if i.fact_id in verdicts]
        return f"{judged.count('reject')}/{len(judged)}" if judged else "-"

    structural = [q for q in queue if "structural" in q.reasons]
    return {"queue": rate(queue), "structural": rate(structural), "structural top 5": rate(structural[:5]),
            "low confidence": rate([q for q in queue if "low_confidence" in q.reasons]),
            "proposals queued": rate([q for q in queue if q.proposed]), "not queued": rate(others)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.review_sample", description=__doc__)
    parser.add_argument("--judged", type=Path, help="verdicts to count (JSON lines: fact_id, verdict)")
    args = parser.parse_args()
    queue, others = sample()
    print(f"τ {DEFAULT_TAU:g}: {len(queue)} queued, {len(others)} more drawn from those not queued")
    for label, items in (("queued", queue), ("not queued", others)):
        for i in items:
            kind = "proposal" if i.proposed else "fact"
            print(f"{label:>10}  Δλ {i.score:.2g}  {kind:<8} {','.join(i.reasons) or '-':<30} "
                  f"{i.subject} | {i.predicate} | {i.object}  «{i.sentence[:100]}»")
    if args.judged:
        verdicts = {r["fact_id"]: r["verdict"] for r in map(json.loads, args.judged.read_text().splitlines())}
        for part, rate in rates(queue, others, verdicts).items():
            print(f"rejected, {part}: {rate}")


if __name__ == "__main__":
    main()
