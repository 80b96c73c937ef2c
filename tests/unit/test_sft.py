"""SFT records: short answers that are spans of their source, noise filtered, scored, grounded."""

import json
import shutil

import numpy as np

from datacreek_assets.datasets.quality import EntityVocabulary, grounding, near_duplicates, quality_score
from datacreek_assets.datasets.sft import TEMPLATE_DIR, generate, question_clause, template_sha
from datacreek_assets.retrieval.index import RetrievalIndex
from datacreek_assets.retrieval.prompt import NOT_IN_DOCUMENTS

JSON_TEXT = ("The json module\n\nJSON (JavaScript Object Notation) is a subset of JavaScript syntax.\n\n"
             "dumps\n\nSerialize obj to a JSON formatted str. If sort_keys is true (default: False), then the "
             "output of dictionaries will be sorted by key.\n\nloads\n\nDeserialize s to a Python object.")
CSV_TEXT = ("The csv module\n\nCSV (Comma Separated Values) files are common.\n\nSniffer\n\n"
            "Deduce the format of a CSV file. Nobody inspects the spammish repetition. "
            "Nobody knows; nobody asks, and nobody cares.")
CHUNKS = [
    {"chunk_id": "c1", "doc_id": "inbox/json.md", "position": 0, "text": JSON_TEXT},
    {"chunk_id": "c2", "doc_id": "inbox/csv.txt", "position": 0, "text": CSV_TEXT},
]
FACTS = [
    {"fact_id": "f1", "subject": "JSON", "predicate": "is_a", "object": "subset of JavaScript syntax",
     "sentence": "JSON (JavaScript Object Notation) is a subset of JavaScript syntax.", "chunk_id": "c1",
     "doc_id": "inbox/json.md"},
    {"fact_id": "f2", "subject": "Nobody", "predicate": "inspects", "object": "spammish repetition",
     "sentence": "Nobody inspects the spammish repetition.", "chunk_id": "c2", "doc_id": "inbox/csv.txt"},
    {"fact_id": "f3", "subject": "json.org", "predicate": "is_a", "object": "web site about JSON",
     "sentence": "json.org is a web site.", "chunk_id": "c1", "doc_id": "inbox/json.md"},
]


def by_answer(dataset):
    return {r.output: r for r in dataset.records if r.template != "blank.j2"}


def test_records_are_short_answers_taken_from_their_source():
    dataset = generate(FACTS, CHUNKS)
    records = by_answer(dataset)
    assert records["dumps"].question == ("Which function of the json documentation serializes obj to a JSON "
                                         "formatted str?")
    assert records["loads"].template == "member.j2"
    assert records["Sniffer"].question.startswith("Which class of the csv documentation deduces the format")
    assert records["False"].question == "In the json documentation, what is the default value of sort_keys in dumps?"
    assert records["JavaScript Object Notation"].template == "acronym.j2"
    assert records["Comma Separated Values"].question == "In the csv documentation, what does CSV stand for?"
    assert records["subset of JavaScript syntax"].fact_ids == ["f1"]
    for r in dataset.records:
        assert len(r.output.split()) <= 6 and r.output.lower() in r.source_text.lower()
        assert r.score >= dataset.threshold
        chat = r.chat()
        assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant"]
        assert chat["question"] == r.question and chat["answer"] == r.output
        # open-book: the source passage is given (its lines kept, blank lines dropped)
        assert " ".join(r.source_text.split()) in " ".join(chat["messages"][1]["content"].split())
    alpaca = records["dumps"].alpaca()
    assert alpaca["instruction"] == records["dumps"].question and JSON_TEXT.split()[0] in alpaca["input"]


def test_entity_noise_is_filtered_and_counted():
    dataset = generate(FACTS, CHUNKS)
    assert all("Nobody" not in r.question and "json.org" not in r.question for r in dataset.records)
    assert dataset.filtered["common_word"] == 1 and dataset.filtered["code_token"] == 1
    vocabulary = EntityVocabulary([CSV_TEXT, JSON_TEXT])
    assert vocabulary.reason_to_reject("Nobody") == "common_word"
    assert vocabulary.reason_to_reject("JSON") is None
    assert vocabulary.reason_to_reject("x") == "short_entity"
    assert vocabulary.reason_to_reject("f(x)") == "code_token" and vocabulary.reason_to_reject("None") == "code_token"


def test_question_forms():
    assert question_clause("Return the low median of numeric data.", "median_low") == \
        "returns the low median of numeric data"
    assert question_clause("Encode the bytes s using Base64 and return a bytes object.", "b64encode") == \
        "encodes the bytes s using Base64 and returns a bytes object"
    assert question_clause("Raised when a registry operation fails.", "RegistryError") == \
        "is raised when a registry operation fails"
    assert question_clause("This class implements rational numbers.", "Fraction") == "implements rational numbers"
    assert question_clause("Basic message object.", "HTTPMessage") is None  # a noun phrase: no question
    assert question_clause("Return a new dumps object.", "dumps") is None  # the answer would be in the question


def test_quality_score_and_near_duplicates():
    assert grounding("dumps", "dumps\n\nSerialize obj") == 1.0
    assert grounding("sorted keys", "the keys are sorted") == 1.0  # all content words, not verbatim
    assert grounding("a snake", "Python is a language") == 0.0
    long = " ".join(["word"] * 16)
    assert quality_score("member.j2", "dumps", "dumps") > 0.9 and quality_score("member.j2", long, long) == 0.0
    questions = ["Which function of json serializes obj to a str?", "Which function of json serializes obj to str?",
                 "Which function of json reads a file?"]
    assert near_duplicates(questions, ["dumps", "dumps", "load"], [0.9, 0.95, 0.9]) == {0}


def test_split_dedup_and_version_are_deterministic():
    a, b = generate(FACTS, CHUNKS), generate(list(reversed(FACTS)), CHUNKS + CHUNKS)
    assert a.version == b.version and [r.record_id for r in a.records] == [r.record_id for r in b.records]
    assert b.duplicates > 0
    assert {r.split for r in a.records} <= {"train", "validation"}
    assert generate(FACTS[:1], CHUNKS[:1]).version != a.version


def test_template_sha_changes_with_the_templates(tmp_path):
    copy = tmp_path / "v2"
    shutil.copytree(TEMPLATE_DIR, copy)
    assert template_sha(copy) == template_sha()
    (copy / "member.j2").write_text((copy / "member.j2").read_text().replace("Which", "What"))
    assert template_sha(copy) != template_sha()
    assert generate(FACTS, CHUNKS, template_dir=copy).version != generate(FACTS, CHUNKS).version


def test_records_carry_retrieved_passages_and_some_ask_over_passages_without_the_answer():
    from datacreek_assets.embeddings.embedder import embed_texts

    others = [{"chunk_id": f"o{i}", "doc_id": f"inbox/other{i}.md", "position": 0,
               "text": f"Recipe {i}: simmer the lentils with garlic for {10 + i} minutes."} for i in range(6)]
    chunks = CHUNKS + others
    vectors = embed_texts([c["text"] for c in chunks])
    index = RetrievalIndex("acme", [c["chunk_id"] for c in chunks], [c["doc_id"] for c in chunks],
                           [c["text"] for c in chunks], vectors)
    dataset = generate(FACTS, chunks, index, embed_texts, context_k=2)
    answered = [r for r in dataset.records if r.template != "absent.j2"]
    assert answered and all(len(r.passages) == 2 and r.source_text in r.passages for r in answered)
    assert dataset.retrieval_hit_rate is not None and 0 < dataset.retrieval_hit_rate <= 1
    absent = [r for r in dataset.records if r.template == "absent.j2"]
    assert absent  # the share without the answer is there
    for r in absent:
        assert r.output == NOT_IN_DOCUMENTS and r.split == "train"
        assert all(r.source_text != p for p in r.passages)
    assert json.loads(json.dumps(dataset.records[0].chat()))  # serialisable as written


def test_a_not_in_the_documents_record_scores_as_grounded():
    assert np.isclose(quality_score("absent.j2", NOT_IN_DOCUMENTS, NOT_IN_DOCUMENTS), 0.9)


def test_fill_in_the_blank_hides_one_name_or_value_that_occurs_once(monkeypatch):
    from datacreek_assets.datasets import sft

    monkeypatch.setattr(sft, "BLANK_SHARE", 100)  # every chunk gives one (normally a hashed 40 %)
    [blank] = [r for r in generate(FACTS, CHUNKS[:1]).records if r.template == "blank.j2"]
    assert blank.question.startswith("Fill in the blank from the json documentation: ") and "___" in blank.question
    assert blank.output in ("False", "sort_keys") and blank.output not in blank.question
    assert blank.question.replace("___", blank.output).split(": ", 1)[1] in " ".join(JSON_TEXT.split())
    monkeypatch.setattr(sft, "BLANK_SHARE", 0)
    assert not [r for r in generate(FACTS, CHUNKS).records if r.template == "blank.j2"]


def test_a_confirmed_fact_wins_its_question_and_a_rejected_one_is_said_dropped():
    from datacreek_assets.datasets.sft import curation_drops

    text = "The json module\n\nJSON is a text format. Every JSON is a data interchange format."
    chunks = [{"chunk_id": "j", "doc_id": "inbox/json.md", "position": 0, "text": text}]
    facts = [{"fact_id": f"d{i}", "subject": "JSON", "predicate": "is_a", "object": answer,
              "sentence": sentence, "chunk_id": "j", "doc_id": "inbox/json.md"}
             for i, (answer, sentence) in enumerate((("text format", "JSON is a text format."),
                                                     ("data interchange format", "Every JSON is a data interchange format.")))]

    def definitions(dataset) -> dict:
        return {r.output: r for r in dataset.records if r.question.endswith("what is JSON?")}

    unreviewed = definitions(generate(facts, chunks))
    assert len(unreviewed) == 1  # one question, one answer: the better-scored
    loser = next(f for f in facts if f["object"] not in unreviewed)
    confirmed = definitions(generate([{**f, "confirmed": f is loser} for f in facts], chunks))
    assert list(confirmed) == [loser["object"]] and confirmed[loser["object"]].confirmed
    # rejected, the winner's record is gone from the dataset and said dropped, with who and why
    winner = next(f for f in facts if f is not loser)
    drops = curation_drops([{**winner, "rejected_by": "ada", "rejected_reason": "not a definition"}], chunks)
    assert [(d["fact"], d["rejected_by"], d["reason"]) for d in drops] == [(winner["fact_id"], "ada", "not a definition")]
    assert drops[0]["record"] == unreviewed[winner["object"]].record_id
