"""Question/answer records a person would accept, from a tenant's chunks and facts, through
versioned Jinja templates, each with the passages it is answered from (open-book).

Records come from three shapes of text:
- a documented member (a name on its own line, then its summary sentence): "Which function of
  the json documentation serializes obj to a JSON formatted str?" -> "dumps";
- a definition fact ("X is a Y"): "what is X?" -> the defining phrase;
- a present-tense relation fact ("X returns Y"): "what does X return?" -> the object phrase.
Subjects that are ordinary words, code fragments or too short are filtered out (quality.py);
every answer is a span of its source, scored (grounding x brevity x extraction confidence) and
kept above a threshold; near-duplicates are removed. With a retrieval index, each record's prompt
holds the passages retrieval finds for its question, with the source passage put in when
retrieval misses it, so the model learns to answer from context as it is asked at serving; a
share of the questions is also asked over passages without the answer, answered
"Not in the documents.". Splits are by a hash of the record id and the version is a hash of the
content, so unchanged content gives the same version.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from datacreek_assets.datasets.quality import (
    QUALITY_THRESHOLD, STOPWORDS, EntityVocabulary, near_duplicates, quality_score,
)
from datacreek_assets.ingest.chunking import split_sentences
from datacreek_assets.retrieval.index import DEFAULT_K
from datacreek_assets.retrieval.prompt import NOT_IN_DOCUMENTS, SYSTEM_PROMPT, grounded_question

TEMPLATE_SET = "v2"
TEMPLATE_DIR = Path(__file__).with_name("templates") / TEMPLATE_SET
VALIDATION_SHARE = 10  # percent
ABSENT_SHARE = 8  # percent of questions also asked over passages that lack the answer
CONTEXT_K = DEFAULT_K  # passages per prompt, as served
MAX_CLAUSE_WORDS = 24
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{1,60}$")
# Verbs that open documentation summaries ("Return a reader...", "Serialize obj..."). A summary
# that does not open with one (a noun phrase) cannot be turned into a question reliably.
SUMMARY_VERBS = set(
    """return create convert serialize deserialize decode encode read write open close make get set compute
    calculate test check build parse format split join apply call add remove update copy move find search
    match replace compile load dump escape quote unquote wrap fill shorten dedent indent generate choose
    shuffle initialize raise print run start stop wait send receive accept connect bind listen construct
    produce yield iterate sort insert merge hash compare register extract pack unpack compress decompress
    represent implement provide handle define wrap subclass emit log round truncate normalize validate
    transform translate delete rename walk list count filter map reduce cache store retrieve fetch
    submit execute schedule cancel acquire release notify lock encapsulate describe deduce determine
    install translate strip expand tokenize""".split())
_CLASS_LEAD = re.compile(r"^(?:(?:This|The|A|An) (?:class|function|object|type|module|method)s? |"
                         r"(?:Convenience |User-callable |Helper )?function (?:which|that|to) )", re.I)
_SIGNATURE = re.compile(r"^[A-Za-z_][\w.]*\(.*?\)(?: -> [^\s]+)?\s*")  # "capwords(s [,sep]) -> string"
_DEFAULT = re.compile(r"(?<![.\w])([a-z_][a-z0-9_]{2,}(?<!ed))\b(?: is (?:true|false|given|set))? \(default:? `{0,2}([^()`]{1,20}?)`{0,2}\)"
                      r"|\b([a-z_][a-z0-9_]{2,}) defaults to `{0,2}([\w'\".+-]{1,20}?)`{0,2}[\s,.;]")
# What a blank may hide: code names (snake_case, CamelCase, CONSTANTS, dotted), literals, PEP numbers
_BLANKABLE = re.compile(r"\bPEP \d+\b|(?<![\w.])(?:[A-Za-z]+_[A-Za-z0-9_]+|[A-Z][a-z]+[A-Z]\w*|[A-Z]{4,}\w*"
                        r"|True|False|None|\d+(?:\.\d+)?(?![\d)]))(?![\w(])")  # a number, but not "4)" of a list
BLANK_SHARE = 40  # percent of chunks that give one fill-in-the-blank record
MAX_BLANK_SENTENCE_WORDS = 40
_ACRONYM = re.compile(r"\b([A-Z][A-Z0-9]{1,7})s? \(([A-Z][\w-]*(?: [\w-]+){1,6})\)"
                      r"|\b([A-Z][\w-]*(?: [\w-]+){1,6}) \(([A-Z][A-Z0-9]{1,7})s?\)")


@dataclass
class SftRecord:
    record_id: str
    template: str
    question: str
    output: str
    source_text: str
    doc_id: str
    chunk_ids: list[str]
    fact_ids: list[str]
    score: float = 0.0
    passages: list[str] | None = None  # None: closed-book
    split: str = "train"
    passage_docs: list[str] = field(default_factory=list)  # documents its passages come from (lineage)
    confirmed: bool = False  # from a fact a curator confirmed: preferred over an unreviewed twin

    @property
    def instruction(self) -> str:
        return self.question if self.passages is None else grounded_question(self.question, self.passages)

    def chat(self) -> dict:
        return {
            "id": self.record_id,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": self.instruction},
                {"role": "assistant", "content": self.output},
            ],
            "question": self.question,
            "answer": self.output,
            "quality": self.score,
            "lineage": {"doc_id": self.doc_id, "chunk_ids": self.chunk_ids, "fact_ids": self.fact_ids,
                        "template": self.template},
            "split": self.split,
        }

    def alpaca(self) -> dict:
        context = "" if self.passages is None else grounded_question("", self.passages).rsplit("\n\n", 1)[0]
        return {"instruction": self.question, "input": context, "output": self.output, "id": self.record_id,
                "split": self.split}


@dataclass
class SftDataset:
    records: list[SftRecord]
    template_sha: str
    version: str
    filtered: Counter = field(default_factory=Counter)
    duplicates: int = 0
    threshold: float = QUALITY_THRESHOLD
    retrieval_hit_rate: float | None = None  # share of records whose source retrieval found in its top k

    def split_counts(self) -> dict[str, int]:
        return dict(Counter(r.split for r in self.records))

    def score_summary(self) -> dict[str, float]:
        scores = sorted(r.score for r in self.records)
        if not scores:
            return {}
        return {"min": scores[0], "median": scores[len(scores) // 2], "max": scores[-1]}


def template_sha(template_dir: Path = TEMPLATE_DIR) -> str:
    digest = hashlib.sha256()
    for path in sorted(template_dir.glob("*.j2")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _environment(template_dir: Path) -> Environment:
    return Environment(loader=FileSystemLoader(template_dir), undefined=StrictUndefined, autoescape=False,
                       keep_trailing_newline=False)


def _render(env: Environment, template: str, **values) -> tuple[str, str]:
    text = env.get_template(template).render(**values)
    question, _, answer = text.partition("\n---\n")
    return " ".join(question.split()), " ".join(answer.split())


def _source_name(doc_id: str) -> str:
    return Path(doc_id).stem.replace("_", ".")


def third_person(verb: str) -> str:
    if verb in ("do", "go"):
        return verb + "es"
    if verb.endswith(("s", "x", "z", "ch", "sh")):
        return verb + "es"
    if verb.endswith("y") and verb[-2:-1] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


# Relation facts make questions only with these verbs: "what does X return?" has one answer,
# "what does X use?" rarely does.
RELATION_VERBS = {"return", "raise", "provide", "contain", "implement", "represent", "support", "accept",
                  "create", "define", "produce", "generate", "convert", "encode", "decode", "wrap", "emit"}


def base_form(verb: str) -> str | None:
    """'returns' -> 'return', 'matches' -> 'match', 'copies' -> 'copy'; None unless it is the third
    person of a known verb."""
    for candidate in (verb[:-1], verb[:-2], verb[:-3] + "y"):
        if candidate in SUMMARY_VERBS | RELATION_VERBS and third_person(candidate) == verb:
            return candidate
    return None


def question_clause(summary: str, name: str) -> str | None:
    """A summary sentence as the verb phrase of a "Which ... of M ...?" question, or None."""
    text = _CLASS_LEAD.sub("", _SIGNATURE.sub("", summary.strip()).rstrip(".:").strip())
    tokens = text.split()
    if not tokens or len(tokens) > MAX_CLAUSE_WORDS or name.lower() in (t.strip("`'\"().,").lower() for t in tokens):
        return None
    first = tokens[0].lower()
    if first == "raised" and len(tokens) > 2:  # an exception's summary: "Raised when ..."
        return "is " + text[0].lower() + text[1:]
    if first in SUMMARY_VERBS:
        verb = third_person(first)
    elif base_form(first) in SUMMARY_VERBS:
        verb = first
    else:
        return None
    # "Encode s and return a bytes object": every coordinated verb agrees with the subject
    rest = " ".join(third_person(t) if prev.lower() in ("and", "or") and t in SUMMARY_VERBS else t
                    for prev, t in zip(tokens, tokens[1:]))
    if not rest or any(ch in rest for ch in "\n|>"):
        return None
    return f"{verb} {rest}"


def _members(chunk: dict) -> list[tuple[str, str]]:
    """(name, summary sentence) for each documented member in a chunk: a block that is one identifier
    followed by a block of prose."""
    blocks = [b.strip() for b in chunk["text"].split("\n\n")]
    found = []
    for name, body in zip(blocks, blocks[1:]):
        if _IDENTIFIER.match(name) and body[:1].isalpha():
            sentences = split_sentences(body)
            if sentences:
                found.append((name, sentences[0]))
    return found


def _member_of(chunk: dict, sentence: str) -> str | None:
    """The documented member whose text holds ``sentence`` (the nearest name block before it)."""
    before = chunk["text"][: max(0, chunk["text"].find(sentence))]
    names = [b.strip() for b in before.split("\n\n") if _IDENTIFIER.match(b.strip())]
    return names[-1] if names else None


def _blank(chunk: dict) -> tuple[str, str] | None:
    """One sentence of a chunk with one blankable span replaced by ___, for BLANK_SHARE % of chunks
    (chosen by a hash of the chunk id: the same chunks every run). The span must occur once in
    the sentence, so the blank has one answer."""
    key = hashlib.sha256(chunk["chunk_id"].encode()).hexdigest()
    if _percent(key) >= BLANK_SHARE:
        return None
    options = []
    for sentence in split_sentences(chunk["text"]):
        n = len(sentence.split())
        if not 6 <= n <= MAX_BLANK_SENTENCE_WORDS or ">>>" in sentence or sentence.count("(") > 2:
            continue
        spans = [m for m in _BLANKABLE.finditer(sentence) if sentence.count(m.group()) == 1]
        options += [(sentence[:m.start()] + "___" + sentence[m.end():], m.group()) for m in spans]
    return options[int(key[8:16], 16) % len(options)] if options else None


def _initials_match(acronym: str, expansion: str) -> bool:
    """JSON / JavaScript Object Notation: the acronym's letters start the expansion's words (or
    its capitals, for CamelCase words)."""
    capitals = "".join(ch for ch in expansion if ch.isupper())
    initials = "".join(w[0] for w in re.split(r"[\s-]+", expansion) if w).upper()
    return acronym.upper() in (capitals, initials) or initials.startswith(acronym.upper())


def _candidates(env: Environment, facts: list[dict], chunks: list[dict], filtered: Counter) -> list[SftRecord]:
    vocabulary = EntityVocabulary([c["text"] for c in chunks])
    candidates: list[SftRecord] = []
    for c in chunks:
        for name, summary in _members(c):
            clause = question_clause(summary, name)
            if clause is None:
                filtered["no_question_form"] += 1
                continue
            # CamelCase names are classes; XMLID-style capitals and lower case are functions
            capitalised = name[:1].isupper() and not name.isupper()
            kind = ("exception" if clause.startswith("is raised") else "class") if capitalised else "function"
            question, answer = _render(env, "member.j2", kind=kind, source=_source_name(c["doc_id"]),
                                       clause=clause, name=name)
            candidates.append(SftRecord("", "member.j2", question, answer, c["text"], c["doc_id"],
                                        [c["chunk_id"]], []))
        source = _source_name(c["doc_id"])
        for sentence in split_sentences(c["text"]):
            for m in _DEFAULT.finditer(sentence):
                parameter, value = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
                if value.lower() in STOPWORDS:
                    continue  # "defaults to the ..." is prose, not a value
                member = _member_of(c, sentence)
                question, answer = _render(env, "default.j2", source=source, parameter=parameter, value=value,
                                           of_member=f" in {member}" if member else "")
                candidates.append(SftRecord("", "default.j2", question, answer, c["text"], c["doc_id"],
                                            [c["chunk_id"]], []))
            for m in _ACRONYM.finditer(sentence):
                acronym, expansion = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
                if not _initials_match(acronym, expansion):
                    continue
                question, answer = _render(env, "acronym.j2", source=source, acronym=acronym, expansion=expansion)
                candidates.append(SftRecord("", "acronym.j2", question, answer, c["text"], c["doc_id"],
                                            [c["chunk_id"]], []))
        blank = _blank(c)
        if blank is not None:
            question, answer = _render(env, "blank.j2", source=source, sentence=blank[0], answer=blank[1])
            candidates.append(SftRecord("", "blank.j2", question, answer, c["text"], c["doc_id"], [c["chunk_id"]], []))
    text_of = {c["chunk_id"]: c["text"] for c in chunks}
    for f in facts:
        reason = vocabulary.reason_to_reject(f["subject"])
        if reason:
            filtered[reason] += 1
            continue
        source = _source_name(f["doc_id"])
        if len(f["object"].split()) < 2 and f["object"].islower():
            filtered["vague_object"] += 1  # "X is a default", "X returns information"
            continue
        if f["predicate"] == "is_a":
            question, answer = _render(env, "definition.j2", subject=f["subject"], object=f["object"],
                                       article="", source=source)
            template = "definition.j2"
        else:
            verb, _, particle = f["predicate"].partition("_")
            base = base_form(verb)
            if base not in RELATION_VERBS:
                filtered["predicate_tense"] += 1
                continue
            question, answer = _render(env, "relation.j2", subject=f["subject"], object=f["object"],
                                       verb=f"{base} {particle}".strip(), source=source)
            template = "relation.j2"
        passage = text_of.get(f["chunk_id"], f["sentence"])
        candidates.append(SftRecord("", template, question, answer, passage, f["doc_id"], [f["chunk_id"]],
                                    [f["fact_id"]]))
    return candidates


def _record_id(question: str, answer: str) -> str:
    return hashlib.sha256(f"{question.lower()}\0{answer.lower()}".encode()).hexdigest()[:16]


def _percent(key: str) -> int:
    return int(key[:8], 16) % 100


def generate(facts: list[dict], chunks: list[dict], index=None, embed=None,
             template_dir: Path = TEMPLATE_DIR, context_k: int = CONTEXT_K) -> SftDataset:
    """``facts``: live_facts() rows; ``chunks``: live_chunks() rows; ``index``: the tenant's
    RetrievalIndex and ``embed`` (texts -> unit vectors) to retrieve each question's passages;
    without an index the prompt holds the source passage alone."""
    env = _environment(template_dir)
    filtered: Counter = Counter()
    candidates = _candidates(env, facts, chunks, filtered)
    confirmed = {f["fact_id"] for f in facts if f.get("confirmed")}
    for r in candidates:
        r.confirmed = any(fact_id in confirmed for fact_id in r.fact_ids)
    kept: list[SftRecord] = []
    for r in candidates:
        if not r.question or not r.output:
            filtered["empty"] += 1
            continue
        r.score = quality_score(r.template, r.output, r.source_text)
        if r.score < QUALITY_THRESHOLD:
            filtered["below_quality_threshold"] += 1
            continue
        kept.append(r)
    # exact duplicates (same question and answer), then ambiguous questions (one question, several
    # answers: only the best-scored stays), then near-duplicates
    by_id: dict[str, SftRecord] = {}
    duplicates = 0
    for r in sorted(kept, key=lambda r: (not r.confirmed, -r.score, r.question, r.output, r.chunk_ids)):
        key = _record_id(r.question, r.output)
        if key in by_id:
            duplicates += 1
            continue
        r.record_id = key
        by_id[key] = r
    by_question: dict[str, SftRecord] = {}
    for r in by_id.values():
        q = " ".join(r.question.lower().split())
        if q in by_question:
            filtered["ambiguous_question"] += 1
        else:
            by_question[q] = r
    unique = sorted(by_question.values(), key=lambda r: r.record_id)
    twins = near_duplicates([r.question for r in unique], [r.output for r in unique], [r.score for r in unique])
    duplicates += len(twins)
    records = [r for i, r in enumerate(unique) if i not in twins]
    for r in records:
        r.split = "validation" if _percent(r.record_id) < VALIDATION_SHARE else "train"
    hit_rate = None
    if index is not None and len(index):
        records, hit_rate = _with_passages(records, index, embed, context_k)
    else:
        for r in records:
            r.passages = [r.source_text]
    records.sort(key=lambda r: r.record_id)
    sha = template_sha(template_dir)
    body = "".join(json.dumps(r.chat(), sort_keys=True) for r in records)
    version = hashlib.sha256(f"{sha}\0{body}".encode()).hexdigest()[:12]
    return SftDataset(records, sha, version, filtered, duplicates, QUALITY_THRESHOLD, hit_rate)


def curation_drops(rejected: list[dict], chunks: list[dict], kept: set[str] = frozenset(),
                   template_dir: Path = TEMPLATE_DIR) -> list[dict]:
    """The records the rejected facts (``TenantGraph.rejected_facts``) would have made, each with
    its fact and the rejection: what the dataset says it dropped, and why. ``kept``: the dataset's
    record ids (a record a live twin fact still makes was not dropped)."""
    by_fact = {f["fact_id"]: f for f in rejected}
    drops = {}
    for r in _candidates(_environment(template_dir), rejected, chunks, Counter()):
        fact = next((by_fact[i] for i in r.fact_ids if i in by_fact), None)
        if fact is not None and r.question and r.output and _record_id(r.question, r.output) not in kept:
            record = _record_id(r.question, r.output)
            drops[record] = {"record": record, "fact": fact["fact_id"], "template": r.template,
                             "rejected_by": fact["rejected_by"], "reason": fact["rejected_reason"]}
    return sorted(drops.values(), key=lambda d: (d["fact"], d["record"]))


def _with_passages(records: list[SftRecord], index, embed, k: int) -> tuple[list[SftRecord], float]:
    """Each record's passages as retrieval finds them for its question; the source passage goes in
    (in place of the weakest) where retrieval misses it. Some training questions are added again
    over passages that lack the answer, answered NOT_IN_DOCUMENTS."""
    vectors = embed([r.question for r in records])
    hits = 0
    absent: list[SftRecord] = []
    for r, vector in zip(records, vectors):
        found = index.search(vector, k + 4, question=r.question)
        top = [p.text for p in found[:k]]
        answer = r.output.lower()
        # retrieval found it: the source chunk, or a chunk of the same document holding the answer
        # (chunks overlap, so a neighbour often holds the same sentence)
        if any(p.chunk_id in r.chunk_ids or (p.doc_id == r.doc_id and answer in p.text.lower()) for p in found[:k]):
            hits += 1
            r.passages = top
            r.passage_docs = sorted({p.doc_id for p in found[:k]})
        else:
            slot = int(r.record_id[8:12], 16) % k  # where the source goes, spread over the slots
            r.passages = (top[:k - 1])[:slot] + [r.source_text] + (top[:k - 1])[slot:]
            r.passage_docs = sorted({p.doc_id for p in found[:k - 1]} | {r.doc_id})
        if r.split == "train" and _percent(r.record_id[4:]) < ABSENT_SHARE:
            without = [p.text for p in found if p.chunk_id not in r.chunk_ids and answer not in p.text.lower()][:k]
            if len(without) == k:
                absent.append(SftRecord(_record_id(r.question, NOT_IN_DOCUMENTS), "absent.j2", r.question,
                                        NOT_IN_DOCUMENTS, r.source_text, r.doc_id, r.chunk_ids, r.fact_ids,
                                        quality_score("absent.j2", NOT_IN_DOCUMENTS, NOT_IN_DOCUMENTS),
                                        without, "train",
                                        sorted({p.doc_id for p in found if p.text in without} | {r.doc_id})))
    return records + absent, hits / len(records) if records else 0.0


def documents_index(records: list[SftRecord]) -> dict[str, list[str]]:
    """doc_id -> ids of the records that quote it (as source or in a passage): what erasure reads
    to find a document's records without scanning every version."""
    index: dict[str, set[str]] = {}
    for r in records:
        for doc in {r.doc_id, *r.passage_docs}:
            index.setdefault(doc, set()).add(r.record_id)
    return {doc: sorted(ids) for doc, ids in sorted(index.items())}


def to_jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows).encode()
