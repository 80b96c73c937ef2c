"""Instruction/answer pairs from a tenant's facts and chunks, through versioned Jinja templates.

Every record keeps its lineage (chunk ids, fact ids). Filters drop empty
records, over-long ones, and answers whose content words are not all in the
source text. Records are de-duplicated, split train/validation by a hash of
their id (deterministic), and the dataset version is a hash of its content,
so re-generating unchanged content gives the same version.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from datacreek_assets.graph.extraction import extract
from datacreek_assets.ingest.chunking import split_sentences

TEMPLATE_SET = "v1"
TEMPLATE_DIR = Path(__file__).with_name("templates") / TEMPLATE_SET
SYSTEM_PROMPT = "You answer questions about the organisation's documents, briefly and only from them."
VALIDATION_SHARE = 10  # percent
MAX_ANSWER_WORDS = 120
MAX_INSTRUCTION_CHARS = 400
_WORDS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
STOPWORDS = set("a an the is are was were of to in on for and or by with as at from that this it its be".split())


@dataclass
class SftRecord:
    record_id: str
    template: str
    instruction: str
    output: str
    source_text: str
    doc_id: str
    chunk_ids: list[str]
    fact_ids: list[str]
    split: str = "train"

    def chat(self) -> dict:
        return {
            "id": self.record_id,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": self.instruction},
                {"role": "assistant", "content": self.output},
            ],
            "lineage": {"doc_id": self.doc_id, "chunk_ids": self.chunk_ids, "fact_ids": self.fact_ids,
                        "template": self.template},
            "split": self.split,
        }

    def alpaca(self) -> dict:
        return {"instruction": self.instruction, "input": "", "output": self.output, "id": self.record_id,
                "split": self.split}


@dataclass
class SftDataset:
    records: list[SftRecord]
    template_sha: str
    version: str
    filtered: Counter = field(default_factory=Counter)
    duplicates: int = 0

    def split_counts(self) -> dict[str, int]:
        return dict(Counter(r.split for r in self.records))


def template_sha(template_dir: Path = TEMPLATE_DIR) -> str:
    digest = hashlib.sha256()
    for path in sorted(template_dir.glob("*.j2")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _environment(template_dir: Path) -> Environment:
    return Environment(loader=FileSystemLoader(template_dir), undefined=StrictUndefined, autoescape=False,
                       keep_trailing_newline=False)


def _render(env: Environment, name: str, **values) -> tuple[str, str]:
    text = env.get_template(name).render(**values)
    instruction, _, output = text.partition("\n---\n")
    return " ".join(instruction.split()), " ".join(output.split())


def _content_words(text: str) -> set[str]:
    return {w.lower().rstrip(".") for w in _WORDS.findall(text)} - STOPWORDS


def supported(answer: str, source: str) -> bool:
    """Every content word of the answer appears in the source text."""
    return _content_words(answer) <= _content_words(source)


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def _source_name(doc_id: str) -> str:
    return Path(doc_id).stem.replace("_", ".")


def generate(facts: list[dict], chunks: list[dict], template_dir: Path = TEMPLATE_DIR) -> SftDataset:
    """``facts``: live_facts() rows; ``chunks``: live_chunks() rows."""
    env = _environment(template_dir)
    candidates: list[SftRecord] = []
    for f in facts:
        source = _source_name(f["doc_id"])
        if f["predicate"] == "is_a":
            instruction, output = _render(env, "definition.j2", subject=f["subject"], object=f["object"],
                                          article=_article(f["object"]), source=source)
            template = "definition.j2"
        else:
            instruction, output = _render(env, "relation.j2", subject=f["subject"], object=f["object"],
                                          predicate_words=f["predicate"].replace("_", " "), source=source)
            template = "relation.j2"
        candidates.append(SftRecord("", template, instruction, output, f["sentence"], f["doc_id"],
                                    [f["chunk_id"]], [f["fact_id"]]))
    for c in chunks:
        entities, _ = extract(c["text"])
        sentences = split_sentences(c["text"])
        for entity in [e for e in entities if len(e.name) > 1][:3]:  # "O", "B" are not topics
            sentence = next((s for s in sentences if entity.name in s), None)
            if sentence is None:
                continue
            instruction, output = _render(env, "passage.j2", entity=entity.name, sentence=sentence,
                                          source=_source_name(c["doc_id"]))
            candidates.append(SftRecord("", "passage.j2", instruction, output, c["text"], c["doc_id"],
                                        [c["chunk_id"]], []))
    filtered: Counter = Counter()
    seen: set[str] = set()
    records: list[SftRecord] = []
    duplicates = 0
    for r in candidates:
        if not r.instruction.strip() or not r.output.strip():
            filtered["empty"] += 1
            continue
        if len(r.output.split()) > MAX_ANSWER_WORDS or len(r.instruction) > MAX_INSTRUCTION_CHARS:
            filtered["too_long"] += 1
            continue
        if not supported(r.output, r.source_text):
            filtered["unsupported_answer"] += 1
            continue
        key = hashlib.sha256(f"{r.instruction.lower()}\0{r.output.lower()}".encode()).hexdigest()
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        r.record_id = key[:16]
        r.split = "validation" if int(key[:8], 16) % 100 < VALIDATION_SHARE else "train"
        records.append(r)
    records.sort(key=lambda r: r.record_id)
    sha = template_sha(template_dir)
    body = "".join(json.dumps(r.chat(), sort_keys=True) for r in records)
    version = hashlib.sha256(f"{sha}\0{body}".encode()).hexdigest()[:12]
    return SftDataset(records, sha, version, filtered, duplicates)


def to_jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows).encode()
