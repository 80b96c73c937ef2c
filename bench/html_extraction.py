"""HTML main-content extraction on real documentation pages: chrome kept vs chrome dropped.

Candidate: the project's `_html_to_text` (drops menus, Prev/Next links, sidebars and footers, then
takes the text). Baseline: the plain BeautifulSoup `get_text` it replaced, kept here verbatim.
Pages: every tests/data/html_pages/<site>/*.html (see SOURCES.md there), plus three demo-corpus
style pages (h1 + <p>s, as datacreek_assets/demo_corpus.py writes them; not counted in "ALL").

Quality is measured against gold main content (selectors per site below, chosen by reading the
HTML), on word tokens (\\w+ runs of the NFKC-lowercased, normalise_text'ed output):
- recall: share of the gold's distinct word 5-grams found in the output (mean per page, and min);
- boiler words: share of output words not covered by any word 3-gram that also occurs in the gold;
- boiler chunks: the output chunked as ingest does (`chunk_text(doc_id, normalise_text(text))`);
  a chunk is boilerplate when under half of its words are covered by gold 3-grams;
- headings alone: gold h1-h3 that come out as a paragraph of their own (blank lines around);
- pre kept: gold <pre> blocks with >= 90 % of their 3-grams in the output.
The time ratio (pages/s, candidate vs baseline) comes from the usual `Comparison`.
Run: python -m bench.html_extraction [--quick] [--examples N]
"""

from __future__ import annotations

import argparse
import copy
import html as htmlmod
import re
import statistics
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from bench.harness import Comparison, format_table, over, run_comparison

PAGES = Path(__file__).resolve().parents[1] / "tests" / "data" / "html_pages"
OLD_BLOCK_TAGS = ["p", "div", "br", "li", "tr", "pre", "blockquote", "section", "article", "table", "ul", "ol",
                  "h1", "h2", "h3", "h4", "h5", "h6", "dt", "dd", "hr", "title", "header", "footer"]
DEMO_MODULES = ["json", "random", "hashlib"]


def old_html_to_text(html: str) -> str:
    """The baseline: `_html_to_text` before chrome removal (plain get_text with line breaks)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        tag.decompose()
    for tag in soup(OLD_BLOCK_TAGS):
        tag.append("\n")
    return soup.get_text()


# ---------------------------------------------------------------- gold main content
def _gold_regions(soup, site: str) -> list:
    """sqlite: <body> minus the top div.nosearch (logo, menus, search), the TOC, syntax-diagram
    SVGs, hide/show buttons and the "last modified" line. postgresql: <body> minus div.navheader,
    div.navfooter and the in-page div.toc. git: div#header (h1 + NAME) + div#content (no footer).
    python (Sphinx): div[role=main] minus the headerlink anchors. demo: <body>."""
    body = soup.body
    for t in body.find_all(["script", "style", "noscript", "template"]):
        t.decompose()
    if site == "sqlite":
        for t in body.find_all("div", class_="nosearch", recursive=False):
            t.decompose()
        for t in body.select("div.fancy_toc, div.imgcontainer, svg, button"):
            t.decompose()
        for line in body.find_all(string=re.compile("This page last modified")):
            (line.find_parent("small") or line.parent).decompose()
        return [body]  # html.parser closes div.fancy early on some pages; nothing else is left
    if site == "postgresql":
        for t in body.select("div.navheader, div.navfooter, div.toc"):
            t.decompose()
        return [body]
    if site == "git":
        return [r for r in (body.find(id="header"), body.find(id="content")) if r is not None]
    if site == "python":
        main = body.find(attrs={"role": "main"})
        for t in main.select("a.headerlink"):
            t.decompose()
        return [main]
    if site == "demo":
        return [body]
    raise ValueError(f"no gold selectors for site {site!r}")


@dataclass
class Gold:
    text: str
    headings: list[str]
    pres: list[str]


def gold(html: str, site: str) -> Gold:
    from bs4 import BeautifulSoup

    regions = _gold_regions(BeautifulSoup(html, "html.parser"), site)
    texts = []
    for region in regions:
        region = copy.copy(region)
        for t in region.find_all(OLD_BLOCK_TAGS + ["td", "th"]):
            t.append("\n")
        texts.append(region.get_text())
    headings = [h.get_text(" ", strip=True) for r in regions for h in r.find_all(["h1", "h2", "h3"])]
    pres = [p.get_text() for r in regions for p in r.find_all("pre")]
    return Gold("\n".join(texts), [h for h in headings if toks(h)], [p for p in pres if toks(p)])


# ---------------------------------------------------------------- metrics
def toks(text: str) -> list[str]:
    return re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower())


def grams(t: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(t[i:i + n]) for i in range(len(t) - n + 1)}


def covered_words(words: list[str], gold3: set, gold_joined: str) -> int:
    """Words of `words` inside some word 3-gram that the gold also has (short runs: found whole)."""
    if len(words) < 3:
        return len(words) if f" {' '.join(words)} " in gold_joined else 0
    covered = [False] * len(words)
    for i in range(len(words) - 2):
        if tuple(words[i:i + 3]) in gold3:
            covered[i] = covered[i + 1] = covered[i + 2] = True
    return sum(covered)


@dataclass
class PageScore:
    site: str
    page: str
    recall: float
    words: int
    boiler_words: int
    chunks: int
    boiler_chunks: int
    heads_alone: int
    heads: int
    pres_kept: int
    pres: int
    boiler_chunk_texts: list[str]


def score(site: str, page: str, g: Gold, raw_text: str) -> PageScore:
    from datacreek_assets.ingest.chunking import chunk_text
    from datacreek_assets.ingest.parsing import normalise_text

    text = normalise_text(raw_text)
    gt, ot = toks(g.text), toks(text)
    g5, g3, o3 = grams(gt, 5), grams(gt, 3), grams(ot, 3)
    gold_joined = f" {' '.join(gt)} "
    out_joined = f" {' '.join(ot)} "
    recall = len(g5 & grams(ot, 5)) / len(g5) if g5 else float(gold_joined in out_joined)
    boiler_chunks = []
    chunks = chunk_text(f"{site}/{page}.html", text)
    for chunk in chunks:
        words = toks(chunk.text)
        if covered_words(words, g3, gold_joined) < len(words) / 2:
            boiler_chunks.append(chunk.text)
    paragraphs = {" ".join(toks(p)) for p in re.split(r"\n{2,}", text)}

    def pre_kept(pre: str) -> bool:
        words = toks(pre)
        if len(words) < 3:
            return f" {' '.join(words)} " in out_joined
        return len(grams(words, 3) & o3) >= 0.9 * len(grams(words, 3))

    pres_kept = sum(map(pre_kept, g.pres))
    return PageScore(site, page, recall, len(ot), len(ot) - covered_words(ot, g3, gold_joined), len(chunks),
                     len(boiler_chunks), sum(" ".join(toks(h)) in paragraphs for h in g.headings), len(g.headings),
                     pres_kept, len(g.pres), boiler_chunks)


# ---------------------------------------------------------------- pages
def demo_page(name: str) -> str:
    """The HTML that write_demo_corpus writes for a module (same template)."""
    from datacreek_assets.demo_corpus import module_text

    title, body = module_text(name)
    paragraphs = "".join(f"<p>{htmlmod.escape(p)}</p>\n" for p in body.split("\n\n"))
    return (f"<html><head><title>{title}</title><style>p{{}}</style></head><body><h1>{title}</h1>\n"
            f"{paragraphs}</body></html>")


def load_pages() -> list[tuple[str, str, str]]:
    pages = [(f.parent.name, f.stem, f.read_text(encoding="utf-8")) for f in sorted(PAGES.glob("*/*.html"))]
    return pages + [("demo", name, demo_page(name)) for name in DEMO_MODULES]


def quality_table(scores: dict[str, list[PageScore]]) -> str:
    sites = list(dict.fromkeys(s.site for s in next(iter(scores.values()))))
    header = (f"{'site':<11} {'pages':>5}  {'method':<10} {'recall (min)':>13} {'boiler words':>12} "
              f"{'chunks':>6} {'boiler chunks':>13} {'headings alone':>14} {'pre kept':>9}")
    lines = [header, "-" * len(header)]
    for site in [s for s in sites if s != "demo"] + ["ALL", "demo"]:
        for method, rows in scores.items():
            rs = [r for r in rows if r.site == site or (site == "ALL" and r.site != "demo")]
            words, chunks = sum(r.words for r in rs), sum(r.chunks for r in rs)
            boiler_chunks = sum(r.boiler_chunks for r in rs)
            lines.append(
                f"{site:<11} {len(rs):>5}  {method:<10} {statistics.mean(r.recall for r in rs):>6.3f} "
                f"({min(r.recall for r in rs):.3f}) {sum(r.boiler_words for r in rs) / max(words, 1):>12.3f} "
                f"{chunks:>6} {boiler_chunks:>4} ({boiler_chunks / max(chunks, 1):>5.1%}) "
                f"{sum(r.heads_alone for r in rs):>6}/{sum(r.heads for r in rs):<7} "
                f"{sum(r.pres_kept for r in rs):>4}/{sum(r.pres for r in rs):<4}")
    return "\n".join(lines)


def comparisons(quick: bool = False) -> list[Comparison]:
    from datacreek_assets.ingest.parsing import _html_to_text

    pages = [h for _, _, h in load_pages()]
    rounds = 1 if quick else 3

    def run(fn):
        return over(pages, fn, rounds)

    return [Comparison(f"HTML to text, {len(pages)} doc pages (chrome dropped)",
                       run(_html_to_text), run(old_html_to_text), unit="pages", repeats=1 if quick else 3,
                       notes="candidate drops page chrome; quality: python -m bench.html_extraction")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.html_extraction", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one timing round")
    parser.add_argument("--examples", type=int, default=2, help="boilerplate chunks shown per site and method")
    args = parser.parse_args(argv)
    from datacreek_assets.ingest.parsing import _html_to_text

    pages = load_pages()
    golds = {(site, name): gold(h, site) for site, name, h in pages}
    methods = {"old": old_html_to_text, "new": _html_to_text}
    scores = {m: [score(site, name, golds[(site, name)], fn(h)) for site, name, h in pages]
              for m, fn in methods.items()}
    print(quality_table(scores))
    for method in methods if args.examples else ():
        print(f"\nboilerplate chunks, {method} method (up to {args.examples} per site, first 100 chars):")
        for site in dict.fromkeys(s for s, _, _ in pages):
            left = [(r.page, t) for r in scores[method] if r.site == site for t in r.boiler_chunk_texts]
            for page, text in left[:args.examples]:
                print(f"  {site}/{page}: {' '.join(text.split())[:100]!r}")
            if len(left) > args.examples:
                print(f"  {site}: ... {len(left) - args.examples} more")
        if not any(r.boiler_chunk_texts for r in scores[method]):
            print("  none")
    results = [run_comparison(c, progress=lambda m: print(m, file=sys.stderr)) for c in comparisons(args.quick)]
    print()
    print(format_table(results))
    for r in results:
        print(f"  {r.name}: {r.notes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
