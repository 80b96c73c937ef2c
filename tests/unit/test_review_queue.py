"""The review queue from a tenant's mentions and facts: undecided facts only, scored by Δλ,
strongest first, cut at τ."""

import pytest

from datacreek_assets.curation.queue import build_queue, entity_graph


def fact(fact_id: str, s: str, o: str, version: int = 0) -> dict:
    return {"fact_id": fact_id, "subject_id": s, "subject": s.title(), "object_id": o, "object": o.title(),
            "predicate": "near", "sentence": f"{s} is near {o}.", "doc_id": "d.md", "chunk_id": "c", "version": version}


# two tight groups of places; "bridge" is the one fact between them
MENTIONS = [{"chunk_id": f"{group}{i}", "entity_id": e} for group, names in (("w", "abcd"), ("e", "wxyz"))
            for i in range(3) for e in names]
FACTS = [fact("bridge", "a", "w"), fact("inside", "a", "b"), fact("decided", "c", "d", version=2),
         fact("loop", "a", "a")]


def test_the_entity_graph_weighs_chunks_and_facts():
    edges = {(a, b): w for a, b, w in entity_graph(MENTIONS, FACTS)}
    assert edges[("a", "b")] == 3 + 1  # three chunks name both, and one fact
    assert edges[("a", "w")] == 1 and ("a", "a") not in edges


def test_undecided_facts_are_queued_strongest_first():
    queue = build_queue(MENTIONS, FACTS, tau=0.0)
    assert [item.fact_id for item in queue] == ["bridge", "inside"]  # decided ones and self-loops are not
    assert queue[0].score > queue[1].score and queue[0].exact
    assert queue[0].subject == "A" and queue[0].sentence == "a is near w."


def test_tau_keeps_the_queue_short():
    everything = build_queue(MENTIONS, FACTS, tau=0.0)
    assert [i.fact_id for i in build_queue(MENTIONS, FACTS, tau=everything[0].score)] == ["bridge"]
    assert build_queue(MENTIONS, FACTS, tau=everything[0].score * 2) == []
    assert len(build_queue(MENTIONS, FACTS, tau=0.0, limit=1)) == 1
    with pytest.raises(ValueError):
        build_queue(MENTIONS, FACTS, tau=-1.0)
