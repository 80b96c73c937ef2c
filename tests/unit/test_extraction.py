import signal

from datacreek_assets.graph.extraction import extract, extract_sentence, measure_precision


def triples(sentence):
    return {(f.subject.name, f.predicate, f.object.name) for f in extract_sentence(sentence)[1]}


def test_copula_and_verb_patterns():
    assert ("Python", "is_a", "programming language") in triples("Python is a programming language that is fun.")
    assert ("json", "provides", "functions") in triples("The json module provides functions for encoding.")
    assert triples("The Danube flows through Vienna and Budapest.") == {
        ("Danube", "flows_through", "Vienna"), ("Danube", "flows_through", "Budapest")}


def test_sentence_openers_are_not_entities():
    entities, facts = extract_sentence("Returns a new list containing all items.")
    assert entities == [] and facts == []


def test_pronoun_i_terminates():
    signal.alarm(5)  # regression: the pronoun "I" once looped forever
    try:
        entities, _ = extract("I think I like Python. I agree.")
    finally:
        signal.alarm(0)
    assert [e.name for e in entities] == ["Python"]


def test_precision_on_the_labelled_sample_is_measured_and_high():
    report = measure_precision()
    assert report["sentences"] >= 30
    assert report["entity_precision"] >= 0.8
    assert report["fact_precision_lenient"] >= 0.8
    assert 0 < report["fact_precision_strict"] <= report["fact_precision_lenient"]


def test_extraction_is_deterministic_across_processes():
    # set and dict iteration follow the per-process string hash seed: another seed must give the same listing
    import os
    import subprocess
    import sys

    text = ("Git is a distributed version control system. Linus Torvalds created Git in 2005. "
            "The Danube flows through Vienna and Budapest. Python is a programming language. "
            "Neo4j stores data as nodes and relationships. The Rhine rises in the Swiss Alps.")
    here = repr(extract(text))
    entities, facts = extract(text)
    # enough of each that an order following the hash seed would almost surely differ between seeds
    assert len(entities) >= 8 and len(facts) >= 4
    code = f"from datacreek_assets.graph.extraction import extract; print(repr(extract({text!r})))"
    for seed in ("1", "2", "3", "4"):
        there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
        assert there == here
