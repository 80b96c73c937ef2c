import json
import shutil

from datacreek_assets.datasets.sft import TEMPLATE_DIR, generate, supported, template_sha

FACTS = [
    {"fact_id": "f1", "subject": "Python", "predicate": "is_a", "object": "programming language",
     "sentence": "Python is a programming language.", "chunk_id": "c1", "doc_id": "langs.md"},
    {"fact_id": "f2", "subject": "json", "predicate": "provides", "object": "functions",
     "sentence": "The json module provides functions for encoding.", "chunk_id": "c1", "doc_id": "langs.md"},
    {"fact_id": "f3", "subject": "Rhine", "predicate": "is_a", "object": "river",
     "sentence": "The Danube is a long river.", "chunk_id": "c2", "doc_id": "rivers.md"},  # answer unsupported
]
CHUNKS = [
    {"chunk_id": "c1", "doc_id": "langs.md", "position": 0,
     "text": "Python is a programming language. The json module provides functions for encoding."},
    {"chunk_id": "c2", "doc_id": "rivers.md", "position": 0, "text": "The Danube is a long river. " + "word " * 300},
]


def test_records_keep_lineage_and_both_formats():
    dataset = generate(FACTS, CHUNKS)
    by_template = {r.template for r in dataset.records}
    assert by_template == {"definition.j2", "relation.j2", "passage.j2"}
    python = next(r for r in dataset.records if r.fact_ids == ["f1"])
    assert python.instruction == "What is Python, according to langs?"
    assert python.output == "Python is a programming language."
    assert python.chunk_ids == ["c1"]
    chat = python.chat()
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant"]
    assert chat["lineage"]["fact_ids"] == ["f1"]
    assert python.alpaca()["output"] == python.output and python.alpaca()["input"] == ""


def test_filters_are_counted():
    dataset = generate(FACTS, CHUNKS)
    assert dataset.filtered["unsupported_answer"] == 1  # the Rhine "fact" is not in its sentence
    assert all(r.fact_ids != ["f3"] for r in dataset.records)
    assert dataset.filtered["too_long"] >= 1  # the 300-word sentence


def test_split_dedup_and_version_are_deterministic():
    a, b = generate(FACTS, CHUNKS), generate(list(reversed(FACTS)), CHUNKS + CHUNKS)
    assert a.version == b.version and [r.record_id for r in a.records] == [r.record_id for r in b.records]
    assert b.duplicates > 0
    assert {r.split for r in a.records} <= {"train", "validation"}
    changed = generate(FACTS[:1], CHUNKS)
    assert changed.version != a.version


def test_template_sha_changes_with_the_templates(tmp_path):
    copy = tmp_path / "v1"
    shutil.copytree(TEMPLATE_DIR, copy)
    assert template_sha(copy) == template_sha()
    (copy / "definition.j2").write_text((copy / "definition.j2").read_text().replace("What is", "Define"))
    assert template_sha(copy) != template_sha()
    assert generate(FACTS, CHUNKS, copy).version != generate(FACTS, CHUNKS).version


def test_supported():
    assert supported("Python is a programming language.", "Python is a programming language that is fun.")
    assert not supported("Python is a snake.", "Python is a programming language.")
