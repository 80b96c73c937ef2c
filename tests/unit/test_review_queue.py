"""The review queue from a tenant's mentions and facts: undecided facts only, scored by Δλ,
strongest first, cut at τ."""

import pytest


from datacreek_assets.curation.queue import (
    COOCCURS,
    LOW_CONFIDENCE,
    build_queue,
    entity_graph,
    neighbourhood,
    proposal_id,
)


def fact(fact_id: str, s: str, o: str, version: int = 0, subject: str = "") -> dict:
    subject = subject or f"{s.title()}ville"
    return {"fact_id": fact_id, "subject_id": s, "subject": subject, "object_id": o, "object": f"{o.title()}ville",
            "predicate": "contains", "sentence": f"{subject} contains {o.title()}ville.", "doc_id": "d.md",
            "chunk_id": "c", "version": version, "confirmed": version > 0}


# two tight groups of places; "bridge" is the one fact between them
MENTIONS = [{"chunk_id": f"{group}{i}", "entity_id": e} for group, names in (("w", "abcd"), ("e", "wxyz"))
            for i in range(3) for e in names]
FACTS = [fact("bridge", "a", "w"), fact("inside", "a", "b"), fact("decided", "c", "d", version=2),
         fact("loop", "a", "a")]


def test_the_entity_graph_weighs_chunks_and_facts():
    edges = {(a, b): w for a, b, w in entity_graph(MENTIONS, FACTS)}
    assert edges[("a", "b")] == 3 + 1  # three chunks name both, and one fact
    assert edges[("a", "w")] == 1 and ("a", "a") not in edges


def facts_only(queue):
    return [item for item in queue if not item.proposed]


def test_undecided_facts_are_queued_strongest_first():
    queue = facts_only(build_queue(MENTIONS, FACTS, tau=0.0))
    assert [item.fact_id for item in queue] == ["bridge", "inside"]  # decided ones and self-loops are not
    assert queue[0].score > queue[1].score and queue[0].exact
    assert queue[0].subject == "Aville" and queue[0].sentence == "Aville contains Wville."


def test_tau_keeps_the_queue_short():
    everything = build_queue(MENTIONS, FACTS, tau=0.0)
    assert everything[0].fact_id == "bridge"  # the one edge between the groups: above every proposal
    assert [i.fact_id for i in build_queue(MENTIONS, FACTS, tau=everything[0].score)] == ["bridge"]
    assert build_queue(MENTIONS, FACTS, tau=everything[0].score * 2) == []
    assert len(build_queue(MENTIONS, FACTS, tau=0.0, limit=1)) == 1
    with pytest.raises(ValueError):
        build_queue(MENTIONS, FACTS, tau=-1.0)


def test_doubtful_extractions_are_queued_whatever_their_delta():
    facts = [*FACTS, fact("expecting", "b", "c", subject="Expecting")]
    everything = facts_only(build_queue(MENTIONS, facts, tau=0.0))
    doubtful = {i.fact_id: i for i in everything}["expecting"]
    assert doubtful.confidence < LOW_CONFIDENCE and "low_confidence" in doubtful.reasons
    sure = {i.fact_id: i for i in everything}["inside"]
    assert sure.confidence == 1.0 and sure.reasons == ("structural",)
    # above every Δλ, only the doubtful one stays
    assert [i.fact_id for i in build_queue(MENTIONS, facts, tau=10.0)] == ["expecting"]


def test_pairs_that_sentences_name_together_without_a_fact_are_proposed_once():
    mentions = [{**m, "entity": f"{m['entity_id'].title()}ville"} for m in MENTIONS]
    texts = {"w0": "Nothing here. Then Aville and Cville meet.", "w1": "Later Cville greets Aville. Then Aville and "
             "Cville meet.", "w2": "Then Aville and Cville meet."}  # the overlap's repeated sentence counts once
    queue = build_queue(mentions, FACTS, tau=0.0, chunk_texts=texts)
    proposed = {(i.subject_id, i.object_id): i for i in queue if i.proposed}
    assert set(proposed) == {("a", "c")}  # the only pair two distinct sentences name (no fact, not decided)
    ac = proposed[("a", "c")]
    assert ac.fact_id == proposal_id("c", "a") and ac.predicate == COOCCURS and "cooccurrence" in ac.reasons
    assert ac.confidence == 0.5 and ac.chunk_id == "w0" and ac.sentence == "Then Aville and Cville meet."
    assert (ac.subject, ac.object) == ("Aville", "Cville") and not queue[0].proposed
    # one sentence, however many chunks repeat it, proposes nothing
    once = {c: "Then Aville and Cville meet." for c in texts}
    assert not [i for i in build_queue(mentions, FACTS, tau=0.0, chunk_texts=once) if i.proposed]
    # a pair with any fact (a rejected one too) is not proposed again
    again = build_queue(mentions, FACTS, tau=0.0, fact_pairs={("a", "b"), ("c", "d"), ("c", "a")}, chunk_texts=texts)
    assert not [i for i in again if i.proposed]
    # a proposal needs τ: a weak one is not queued for doubt alone
    assert not [i for i in build_queue(mentions, FACTS, tau=10.0, chunk_texts=texts) if i.proposed]


def test_literals_and_fragments_are_not_proposed():
    mentions = [{"chunk_id": f"c{i}", "entity_id": e, "entity": name} for i in range(2)
                for e, name in (("t", "True"), ("n", "None"), ("j", "json"))]
    texts = {"c0": "True or None, says json.", "c1": "json maps None and True."}
    proposed = {(i.subject, i.object) for i in build_queue(mentions, [], tau=0.0, chunk_texts=texts) if i.proposed}
    assert proposed == set()


def test_an_edge_s_neighbourhood_starts_with_the_edge_and_names_its_strongest_neighbours():
    edges = entity_graph(MENTIONS, FACTS)
    rows = neighbourhood(edges, {"a": "Alpha", "w": "Whiskey"}, "a", "w", per_endpoint=2)
    assert rows[0] == ["Alpha", "Whiskey", 1.0]
    assert len(rows) == 5 and all(r[0] in ("Alpha", "Whiskey") for r in rows[1:])
    assert rows[1][2] >= rows[2][2]  # strongest first
