"""Deterministic, offline entity and fact extraction for English text.

Entities: runs of capitalised words (leading determiners dropped), acronyms
(JSON, UTF-8), CamelCase and dotted code identifiers (OrderedDict,
json.dumps), and module/package names introduced as "the X module". A single
capitalised word at the start of a sentence counts only when it is not a
common sentence opener and either looks like a name (inner capitals or
digits), appears capitalised elsewhere in the chunk, or is the subject of a
recognised fact pattern.

Facts (hyperedges subject -predicate-> object, with the sentence as evidence):
- copula: ENTITY is/are/was/were a|an|the NP        -> (ENTITY, is_a, NP)
- verb:   ENTITY [adverb] VERB [particle] NP          -> (ENTITY, verb[_particle], NP)
where NP stops at punctuation, a clause word, a preposition other than "of",
or a participle; when NP contains entities, each entity is an object.
Precision is measured on the hand-labelled ``extraction_sample.json``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from datacreek_assets.ingest.chunking import split_sentences

OPENERS = set(
    """the a an this that these those it its if when while in on at for from to with without by of as
    most many some all each every any no not returns return create creates use uses see note also however
    but and or so then there here we you they he she i what which who how why where otherwise example
    examples default optional new get set raise raises only unless since after before during although
    because both either neither such our their his her my your one two three first second next last
    please call calls convert converts make makes given let assume consider do does""".split()
)
DETERMINERS = {"the", "a", "an", "this", "that", "these", "those", "its", "their", "his", "her", "our"}
NP_STOP = set(
    """that which who whom whose where when while because if unless to for by before after with from in
    into on at as than but so or nor until since about over under between through via against onto without
    written known used called created made based designed located named containing using found given
    is are was were be been being has have had can could may might must should will would do does did""".split()
) - {"or"}  # "or" may join two nouns; it is handled like "and"
PARTICLES = {"through", "into", "onto", "from", "to", "with", "over", "across", "around"}
ADVERBS = {"also", "only", "usually", "often", "always", "never", "still", "now", "then", "first", "mostly"}
IRREGULAR_VERBS = {
    "wrote", "made", "built", "took", "gave", "found", "began", "became", "ran", "led", "won", "held",
    "kept", "sold", "bought", "brought", "taught", "drew", "grew", "knew", "left", "met", "paid", "sent",
    "spent", "stood", "told", "thought", "understood", "hid", "fell", "flew", "rose", "wore",
}
NOT_VERBS = {"is", "was", "has", "does", "this", "its", "as", "us", "thus", "plus", "less", "unless",
             "always", "perhaps", "across", "yes", "various", "previous", "famous", "numerous", "bytes",
             "its", "bus", "gas", "access", "class", "process", "status", "address", "series", "species"}
# "the json module": lowercase names are code only before these heads (classes are CamelCase anyway)
CODE_HEADS = {"module", "package"}

_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-']*[A-Za-z0-9_]|[A-Za-z0-9_]|[^\sA-Za-z0-9_]")
_CAP = re.compile(r"[A-Z][A-Za-z0-9]*(?:-[A-Z0-9][A-Za-z0-9]*)*$")
_ACRONYM = re.compile(r"[A-Z][A-Z0-9]+(?:-[0-9]+)?$")
_NAMEISH = re.compile(r"[A-Z].*(?:[A-Z]|[0-9])")  # inner capital or digit: OrderedDict, Neo4j, SQLite
_DOTTED = re.compile(r"[a-z_][a-z0-9_]*(?:\.[a-z_][A-Za-z0-9_]*)+(?:\(\))?$")
_LOWER_IDENT = re.compile(r"[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class Entity:
    entity_id: str  # casefolded name
    name: str
    type: str  # name | acronym | code


@dataclass(frozen=True)
class Mention:
    entity: Entity
    start: int  # token index in the sentence
    end: int  # exclusive


@dataclass(frozen=True)
class Fact:
    subject: Entity
    predicate: str
    object: Entity
    sentence: str

    def fact_id(self, doc_id: str, chunk_id: str) -> str:
        key = "\0".join([doc_id, chunk_id, self.subject.entity_id, self.predicate, self.object.entity_id])
        return hashlib.sha256(key.encode()).hexdigest()


def entity_id_for(name: str) -> str:
    return " ".join(name.split()).casefold()


def _tokens(sentence: str) -> list[str]:
    tokens = _WORD.findall(sentence)
    # a sentence-final period glued to the last word ("disk.") is punctuation
    if tokens and tokens[-1].endswith(".") and len(tokens[-1]) > 1 and not _DOTTED.match(tokens[-1]):
        tokens[-1:] = [tokens[-1][:-1], "."]
    return [t.rstrip(".") if t.endswith(".") and t.count(".") == 1 and len(t) > 1 else t for t in tokens]


def _entity(name: str, kind: str) -> Entity:
    return Entity(entity_id_for(name), name, kind)


def _mentions(tokens: list[str], capitalised_elsewhere: set[str]) -> list[Mention]:
    mentions: list[Mention] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if _DOTTED.match(tok) and not tok.startswith(("e.g", "i.e")):
            mentions.append(Mention(_entity(tok.removesuffix("()"), "code"), i, i + 1))
            i += 1
            continue
        if _LOWER_IDENT.match(tok) and i + 1 < len(tokens) and tokens[i + 1].lower() in CODE_HEADS \
                and i > 0 and tokens[i - 1].lower() in DETERMINERS:
            mentions.append(Mention(_entity(tok, "code"), i, i + 1))
            i += 1
            continue
        if _CAP.match(tok):
            j = i
            while j < len(tokens) and _CAP.match(tokens[j]) and tokens[j] != "I":
                j += 1
            if j == i:  # the pronoun "I"
                i += 1
                continue
            start = i
            # drop a leading determiner or sentence opener ("The Danube", "Decoding JSON")
            while start < j and (tokens[start].lower() in DETERMINERS | OPENERS
                                 or (start == 0 and tokens[start].endswith("ing") and not _NAMEISH.match(tokens[start]))):
                start += 1
            words = tokens[start:j]
            if words and not (len(words) == 1 and words[0].lower() in OPENERS):
                name = " ".join(words)
                kind = "acronym" if len(words) == 1 and _ACRONYM.match(name) else "name"
                if len(words) == 1 and start == 0 and kind == "name" and not _NAMEISH.match(name) \
                        and name not in capitalised_elsewhere:
                    kind = "name?"  # sentence-initial: kept only if it turns out to be a fact's subject
                mentions.append(Mention(_entity(name, kind), start, j))
            i = j
            continue
        i += 1
    return mentions


def _noun_phrase(tokens: list[str], start: int) -> tuple[int, int]:
    i = start
    while i < len(tokens) and tokens[i].lower() in DETERMINERS:
        i += 1
    begin = i
    while i < len(tokens):
        tok = tokens[i]
        if not re.match(r"[A-Za-z0-9_]", tok) or tok.lower() in NP_STOP:
            break
        if tok.lower() not in ("and", "or", "of") and tok.endswith("ing") and i > begin:
            break  # "... encoding documents" keeps going only before the head
        i += 1
    while i > begin and tokens[i - 1].lower() in ("and", "or", "of"):
        i -= 1
    return begin, i


def _is_verb(token: str) -> bool:
    t = token.lower()
    if not token.isalpha() or not token.islower() or t in NOT_VERBS or t in NP_STOP:
        return False
    return t in IRREGULAR_VERBS or (t.endswith("s") and not t.endswith("ss") and len(t) > 3) or t.endswith("ed")


def extract_sentence(sentence: str, capitalised_elsewhere: set[str] | None = None) -> tuple[list[Entity], list[Fact]]:
    tokens = _tokens(sentence)
    mentions = _mentions(tokens, capitalised_elsewhere or set())
    facts: list[Fact] = []
    confirmed: set[str] = set()
    for m in mentions:
        k = m.end
        if k < len(tokens) and tokens[k].lower() in CODE_HEADS and m.entity.type == "code":
            k += 1
        if k < len(tokens) and tokens[k] in ("is", "are", "was", "were") and k + 1 < len(tokens) \
                and tokens[k + 1].lower() in ("a", "an", "the"):
            predicate, np_start = "is_a", k + 1
        else:
            if k < len(tokens) and tokens[k].lower() in ADVERBS:
                k += 1
            if not (k < len(tokens) and _is_verb(tokens[k])):
                continue
            predicate, np_start = tokens[k].lower(), k + 1
            if np_start < len(tokens) and tokens[np_start].lower() in PARTICLES:
                predicate += "_" + tokens[np_start].lower()
                np_start += 1
        begin, end = _noun_phrase(tokens, np_start)
        if end <= begin:
            continue
        inner = [o for o in mentions if o.start >= begin and o.end <= end and o is not m and o.entity.type != "name?"]
        if inner and predicate != "is_a":
            objects = [o.entity for o in inner]
        else:
            phrase = " ".join(tokens[begin:end])
            objects = [Entity(entity_id_for(phrase), phrase, "concept")]
        subject = m.entity if m.entity.type != "name?" else Entity(m.entity.entity_id, m.entity.name, "name")
        confirmed.add(subject.entity_id)
        for obj in objects:
            facts.append(Fact(subject, predicate, obj, sentence))
    entities: dict[str, Entity] = {}
    for m in mentions:
        if m.entity.type == "name?" and m.entity.entity_id not in confirmed:
            continue
        e = m.entity if m.entity.type != "name?" else Entity(m.entity.entity_id, m.entity.name, "name")
        entities.setdefault(e.entity_id, e)
    return list(entities.values()), facts


def extract(text: str) -> tuple[list[Entity], list[Fact]]:
    """Entities and facts of a chunk of text, in order of first appearance."""
    sentences = split_sentences(text)
    elsewhere = set()
    for s in sentences:
        toks = _tokens(s)
        elsewhere.update(t for t in toks[1:] if _CAP.match(t))
    entities: dict[str, Entity] = {}
    facts: list[Fact] = []
    for sentence in sentences:
        ents, fs = extract_sentence(sentence, elsewhere)
        for e in ents:
            entities.setdefault(e.entity_id, e)
        facts.extend(fs)
    return list(entities.values()), facts


SAMPLE_PATH = Path(__file__).with_name("extraction_sample.json")
# Part of every document's signature: bump it when extraction changes, so stored facts are redone.
EXTRACTOR_VERSION = "2"


def measure_precision(sample_path: Path = SAMPLE_PATH) -> dict[str, float | int]:
    """Precision (and recall, for context) of entities and facts on the labelled sample."""
    sample = json.loads(sample_path.read_text())["sentences"]
    ent_tp = ent_n = ent_gold = 0
    fact_strict = fact_lenient = fact_n = fact_gold = 0
    for item in sample:
        entities, facts = extract_sentence(item["text"])
        gold_entities = {entity_id_for(e) for e in item["entities"]}
        got = {e.entity_id for e in entities}
        ent_tp += len(got & gold_entities)
        ent_n += len(got)
        ent_gold += len(gold_entities)
        gold_facts = [(entity_id_for(s), p, entity_id_for(o)) for s, p, o in item["facts"]]
        fact_gold += len(gold_facts)
        for f in facts:
            fact_n += 1
            triple = (f.subject.entity_id, f.predicate, f.object.entity_id)
            if triple in gold_facts:
                fact_strict += 1
                fact_lenient += 1
            elif any(
                g[0] == triple[0] and g[1] == triple[1]
                and (g[2].startswith(triple[2] + " ") or triple[2].startswith(g[2] + " "))
                for g in gold_facts
            ):
                fact_lenient += 1
    return {
        "sentences": len(sample),
        "entity_precision": round(ent_tp / ent_n, 3) if ent_n else 0.0,
        "entity_recall": round(ent_tp / ent_gold, 3) if ent_gold else 0.0,
        "fact_precision_strict": round(fact_strict / fact_n, 3) if fact_n else 0.0,
        "fact_precision_lenient": round(fact_lenient / fact_n, 3) if fact_n else 0.0,
        "fact_recall_lenient": round(fact_lenient / fact_gold, 3) if fact_gold else 0.0,
        "entities_extracted": ent_n,
        "facts_extracted": fact_n,
    }
