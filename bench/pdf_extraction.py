"""PDF text extraction on real multi-page manuals: raw page text vs page furniture dropped and reflowed.

Candidate: the project's `_pdf_to_text` (drops running heads/feet and page numbers, re-joins words
cut at a line-end hyphen, joins a paragraph's lines, blank line between paragraphs and headings).
Baseline: the plain pypdf `extract_text` per page joined by newlines that it replaced, kept verbatim.
PDFs: every tests/data/pdf/*.pdf (see SOURCES.md there), plus three demo-corpus PDFs
(`text_pdf(f"The {m} module\\n\\n{body}")`, as datacreek_assets/demo_corpus.py writes them;
not counted in "ALL").

Gold, per PDF: pypdf's page text minus the running heads/feet and page numbers listed in FURNITURE
below (read off every page by hand; they are only looked for in a page's first or last two lines,
and never on the first page, the title page). Measured on word tokens (\\w+ runs of the
NFKC-lowercased, normalise_text'ed output, with "-" inside or cut at the end of a word removed, so
re-joining a hyphenated word is neither a gain nor a loss here):
- boiler words: output words that the gold does not have (difflib alignment of the two token
  sequences); lost words: gold words missing from the output;
- chunks as ingest makes them (`chunk_text(doc_id, normalise_text(text))`): a chunk is boilerplate
  when at least half of its words are boiler words, touched when it has any;
- bare numbers: output lines that are only a page number;
- hyphen splits: words cut at a line end in the gold body ("docu-\\nment"), and how many come out
  whole ("document") or as a compound ("user-specific");
- paragraphs: blocks between blank lines; headings alone: entries of the PDF's own outline
  (bookmarks) that come out as a paragraph of their own (compared without spaces: pypdf splits some
  words of groff output, "Intr oduction", in both methods).
The time ratio (pages/s, candidate vs baseline) comes from the usual `Comparison`.
Run: python -m bench.pdf_extraction [--quick] [--examples N]
"""

from __future__ import annotations

import argparse
import difflib
import io
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from bench.harness import Comparison, format_table, over, run_comparison

PDFS = Path(__file__).resolve().parents[1] / "tests" / "data" / "pdf"
DEMO_MODULES = ["json", "random", "hashlib"]
EDGE = 2
# Running heads/feet and page numbers, by reading every page of each PDF (whole-line regexes).
FURNITURE = {
    "xorg-security-analysis": {  # DocBook + Apache FOP: chapter title as running head, number at the foot
        "top": [r"Analysis of the X Proto-", r"col for Security Concerns", r"General security con-",
                r"cerns and remedies", r"Security concerns with spe-", r"cific window attributes",
                r"Security concerns", r"with specific requests", r"Events"],
        "bottom": [r"[ivx]+|\d+"],
    },
    "groff-pdfmark": {"top": [r"-([ivx]+|\d+)-"], "bottom": []},  # groff ms: "-2-" centred at the top
}


def old_pdf_to_text(data: bytes) -> str:
    """The baseline: `_pdf_to_text` before this change (pypdf page texts joined by newlines)."""
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    return "\n".join((page.extract_text() or "") for page in reader.pages)


# ---------------------------------------------------------------- gold
@dataclass
class Gold:
    text: str
    headings: list[str]


def _outline_titles(reader) -> list[str]:
    out = []

    def walk(items):
        for item in items:
            if isinstance(item, list):
                walk(item)
            else:
                out.append(re.sub(r"F\[\w*\]", "", item.title))  # groff's font escapes in titles

    walk(reader.outline)
    return out


def gold(name: str, data: bytes) -> Gold:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    rules = FURNITURE.get(name, {"top": [], "bottom": []})
    pages = []
    for number, page in enumerate(reader.pages):
        lines = [" ".join(line.split()) for line in (page.extract_text() or "").split("\n")]
        lines = [line for line in lines if line]
        n = len(lines)

        def furniture(i: int, line: str) -> bool:
            if number == 0:
                return False
            return (i < EDGE and any(re.fullmatch(r, line) for r in rules["top"])) or (
                i >= n - EDGE and any(re.fullmatch(r, line) for r in rules["bottom"]))

        pages.append("\n".join(line for i, line in enumerate(lines) if not furniture(i, line)))
    return Gold("\n".join(pages), [t for t in _outline_titles(reader) if toks(t)])


# ---------------------------------------------------------------- metrics
def toks(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"(?<![-\w])(\w*[^\W\d_])-\s+(?=[^\W\d_])", r"\1", text)  # cut at a line end (a space in chunks)
    text = re.sub(r"(\w)-(?=\w)", r"\1", text)  # a compound's hyphen
    return re.findall(r"\w+", text)


@dataclass
class DocScore:
    kind: str
    name: str
    pages: int
    words: int
    boiler_words: int
    lost_words: int
    chunks: int
    boiler_chunks: int
    touched_chunks: int
    bare_numbers: int
    splits: int
    whole: int
    compound: int
    paragraphs: int
    heads_alone: int
    heads: int
    boiler_chunk_texts: list[str]


def score(kind: str, name: str, pages: int, g: Gold, raw_text: str) -> DocScore:
    from datacreek_assets.ingest.chunking import chunk_text
    from datacreek_assets.ingest.parsing import normalise_text

    text = normalise_text(raw_text)
    gt, ot = toks(g.text), toks(text)
    extra = [False] * len(ot)
    lost = 0
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, gt, ot, autojunk=False).get_opcodes():
        if op in ("insert", "replace"):
            extra[j1:j2] = [True] * (j2 - j1)
        if op in ("delete", "replace"):
            lost += i2 - i1
    chunks = chunk_text(f"{name}.pdf", text)
    boiler, touched, start = [], 0, 0
    for chunk in chunks:
        words = toks(chunk.text)
        at = next((i for i in range(start, len(ot) - len(words) + 1) if ot[i:i + len(words)] == words), None)
        if at is None:  # cannot happen: a chunk is consecutive sentences of the text
            raise AssertionError(f"chunk {chunk.position} of {name} not found in its text")
        start = at
        n_extra = sum(extra[at:at + len(words)])
        touched += n_extra > 0
        if n_extra >= len(words) / 2:
            boiler.append(chunk.text)
    # Each cut word with the word before it, to find that occurrence (not another) in the output.
    body = unicodedata.normalize("NFKC", g.text)
    splits = []
    for m in re.finditer(r"(?<![\w-])([^\W\d_]+)-\n([^\W\d_]+)", body):
        before = body[max(0, m.start() - 100):m.start()]
        context = " ".join(before.split()[-4:]) + (" " if before[-1:].isspace() else "")
        splits.append((context, m.group(1), m.group(2)))
    flat = " ".join(text.split())
    whole = sum(f"{w}{a}{b}" in flat for w, a, b in splits)
    compound = sum(f"{w}{a}-{b}" in flat and f"{w}{a}{b}" not in flat for w, a, b in splits)
    paragraphs = [p for p in re.split(r"\n{2,}", text) if p.strip()]
    alone = {"".join(toks(p)) for p in paragraphs}
    return DocScore(kind, name, pages, len(ot), sum(extra), lost, len(chunks), len(boiler), touched,
                    sum(bool(re.fullmatch(r"[-–(\[ ]*(\d+|[ivxlc]+)[-–)\] ]*", line, re.I))
                        for line in text.split("\n")),
                    len(splits), whole, compound, len(paragraphs),
                    sum("".join(toks(h)) in alone for h in g.headings), len(g.headings), boiler)


# ---------------------------------------------------------------- documents
def demo_pdf(name: str) -> bytes:
    """The PDF that write_demo_corpus writes for a module (same call)."""
    from datacreek_assets.demo_corpus import module_text
    from datacreek_assets.ingest.simple_pdf import text_pdf

    title, body = module_text(name)
    return text_pdf(f"The {title} module\n\n{body}")


def load_pdfs() -> list[tuple[str, str, bytes]]:
    docs = [("real", f.stem, f.read_bytes()) for f in sorted(PDFS.glob("*.pdf"))]
    return docs + [("demo", name, demo_pdf(name)) for name in DEMO_MODULES]


def demo_gold(name: str) -> Gold:
    from datacreek_assets.demo_corpus import module_text

    title, body = module_text(name)
    return Gold(f"The {title} module\n\n{body}", [])


def quality_table(scores: dict[str, list[DocScore]]) -> str:
    header = (f"{'pdf':<24} {'pages':>5}  {'method':<6} {'boiler words':>12} {'lost':>5} {'chunks':>6} "
              f"{'boiler chunks':>13} {'touched':>13} {'bare nos':>8} {'hyphen splits whole/compound':>28} "
              f"{'paragraphs':>10} {'headings alone':>14}")
    lines = [header, "-" * len(header)]
    names = list(dict.fromkeys(s.name for s in next(iter(scores.values())) if s.kind == "real"))
    for name in names + ["ALL", "demo"]:
        for method, rows in scores.items():
            rs = [r for r in rows if r.name == name or (name == "ALL" and r.kind == "real")
                  or (name == "demo" and r.kind == "demo")]
            words, chunks = sum(r.words for r in rs), sum(r.chunks for r in rs)
            bc, tc = sum(r.boiler_chunks for r in rs), sum(r.touched_chunks for r in rs)
            splits = sum(r.splits for r in rs)
            lines.append(
                f"{name:<24} {sum(r.pages for r in rs):>5}  {method:<6} "
                f"{sum(r.boiler_words for r in rs) / max(words, 1):>12.4f} {sum(r.lost_words for r in rs):>5} "
                f"{chunks:>6} {bc:>4} ({bc / max(chunks, 1):>6.1%}) {tc:>4} ({tc / max(chunks, 1):>6.1%}) "
                f"{sum(r.bare_numbers for r in rs):>8} {splits:>8} {sum(r.whole for r in rs):>9}/"
                f"{sum(r.compound for r in rs):<9} {sum(r.paragraphs for r in rs):>10} "
                f"{sum(r.heads_alone for r in rs):>6}/{sum(r.heads for r in rs):<7}")
    return "\n".join(lines)


def comparisons(quick: bool = False) -> list[Comparison]:
    from datacreek_assets.ingest.parsing import _pdf_to_text

    docs = [data for _, _, data in load_pdfs()]
    rounds = 1 if quick else 3

    def run(fn):
        return over(docs, fn, rounds)

    return [Comparison(f"PDF to text, {len(docs)} PDFs (furniture dropped)", run(_pdf_to_text),
                       run(old_pdf_to_text), unit="PDFs", repeats=1 if quick else 3,
                       notes="candidate drops running heads/feet and reflows; quality: python -m bench.pdf_extraction")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pdf_extraction", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one timing round")
    parser.add_argument("--examples", type=int, default=2, help="boilerplate chunks shown per PDF and method")
    parser.add_argument("--no-timing", action="store_true", help="quality table only")
    args = parser.parse_args(argv)
    from pypdf import PdfReader

    from datacreek_assets.ingest.parsing import _pdf_to_text

    docs = load_pdfs()
    golds = {name: gold(name, data) if kind == "real" else demo_gold(name) for kind, name, data in docs}
    pages = {name: len(PdfReader(io.BytesIO(data)).pages) for _, name, data in docs}
    methods = {"old": old_pdf_to_text, "new": _pdf_to_text}
    scores = {m: [score(kind, name, pages[name], golds[name], fn(data)) for kind, name, data in docs]
              for m, fn in methods.items()}
    print(quality_table(scores))
    for method in methods if args.examples else ():
        print(f"\nboilerplate chunks, {method} method (up to {args.examples} per PDF, first 100 chars):")
        for r in scores[method]:
            for text in r.boiler_chunk_texts[:args.examples]:
                print(f"  {r.name}: {' '.join(text.split())[:100]!r}")
            if len(r.boiler_chunk_texts) > args.examples:
                print(f"  {r.name}: ... {len(r.boiler_chunk_texts) - args.examples} more")
        if not any(r.boiler_chunk_texts for r in scores[method]):
            print("  none")
    if args.no_timing:
        return 0
    results = [run_comparison(c, progress=lambda m: print(m, file=sys.stderr)) for c in comparisons(args.quick)]
    print()
    print(format_table(results))
    for r in results:
        print(f"  {r.name}: {r.notes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
