"""Turn inbox files into text with real parsers, or quarantine them with a reason.

Supported: plain text (.txt), Markdown (.md), HTML (.html/.htm), PDF (.pdf).
Everything that cannot be parsed is quarantined, never raised: one bad file
must not fail a tenant's run.
"""

from __future__ import annotations

import hashlib
import io
import re
import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath

DEFAULT_MAX_BYTES = 5 * 1024 * 1024
# Hostile-document limits.
# - HTML: html.parser does not close <p> or <li> implicitly, so a long legacy page can nest a few
#   thousand levels; the chrome rules walk ancestors, which costs depth squared: 100,000 levels
#   took 204 s, 4,096 took 0.5 s (2 shared cores). Deeper pages are refused.
# - Markdown: markdown-it silently drops text nested deeper than its maxNesting, so deeper
#   Markdown is refused rather than cut.
# - PDF: a stream that inflates past 50 MiB is a decompression bomb, not prose (a text page is
#   about 10 KiB).
MAX_HTML_NESTING = 4096
MAX_MARKDOWN_NESTING = 32
MAX_PDF_STREAM_BYTES = 50 * 1024 * 1024
# a DTD internal subset: HTML has none, so it can only be an entity bomb's
_DOCTYPE_SUBSET = re.compile(r"<!DOCTYPE[^>\[]{0,512}\[", re.IGNORECASE)
_MARKDOWN_CONTAINERS = re.compile(r"[ \t]*(?:>|[-+*](?=[ \t]|$)|\d{1,9}[.)](?=[ \t]|$))")

FORMATS = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
           ".html": "html", ".htm": "html", ".pdf": "pdf"}


@dataclass(frozen=True)
class ParsedDocument:
    doc_id: str  # the file's path relative to the inbox
    format: str
    text: str  # normalised
    content_hash: str  # SHA-256 of the raw bytes
    size_bytes: int


@dataclass(frozen=True)
class Quarantined:
    doc_id: str
    reason: str
    size_bytes: int


def normalise_text(text: str) -> str:
    """NFKC, no control characters, single spaces inside lines, at most one blank line."""
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    lines = [" ".join(line.split()) for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


def _looks_binary(data: bytes) -> bool:
    if b"\0" in data[:8192]:
        return True
    sample = data[:8192]
    controls = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
    return controls > len(sample) * 0.05


def _decode(data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode("utf-8")  # strict: invalid encodings are quarantined


BLOCK_TAGS = ["p", "div", "br", "li", "tr", "td", "th", "pre", "blockquote", "section", "article", "table", "ul",
              "ol", "h1", "h2", "h3", "h4", "h5", "h6", "dt", "dd", "hr", "title", "header", "footer"]
HEADINGS = ["h1", "h2", "h3", "h4", "h5", "h6"]

# Page chrome (menus, Prev/Next links, sidebars, footers) is dropped before taking the text: in a
# chunked corpus it becomes whole chunks of navigation that retrieval then returns. The rules are
# the generic markers of chrome (HTML5 landmarks, ARIA roles, the usual class/id names), not one
# site's layout; navheader/navfooter are DocBook XSL's names, related/sphinxsidebar Sphinx's.
CHROME_TAGS = {"nav", "svg", "button", "form"}
CHROME_ROLES = {"navigation", "banner", "contentinfo", "search"}
CHROME_NAMES = {"nav", "navbar", "navigation", "navheader", "navfooter", "menu", "footer", "breadcrumb",
                "breadcrumbs", "sidebar", "sphinxsidebar", "related", "toc", "skip"}
SECTIONING = ["article", "aside", "main", "nav", "section"]


def _is_chrome(tag, in_main: bool) -> bool:
    if tag.name in ("header", "footer"):
        # only the page's own header/footer (ARIA banner/contentinfo), not an article's or a section's
        chrome = not in_main and tag.find_parent(SECTIONING) is None
    elif tag.name == "aside":
        chrome = not in_main  # inside the main content an aside is a footnote or a note
    else:
        chrome = tag.name in CHROME_TAGS
    if not chrome:
        # Class names are split into words ("nav-content", "fancy_toc"); an id must match whole, as
        # ids are often made from heading text (id="_bisect_skip" is a section, not a skip link).
        tokens = set(re.split(r"[-_\s]+", " ".join(tag.get("class") or []).lower()))
        tokens.add((tag.get("id") or "").lower())
        chrome = tag.get("role") in CHROME_ROLES or not tokens.isdisjoint(CHROME_NAMES)
    # An element holding the page's h1 is the title's header or a layout wrapper, not chrome.
    return chrome and tag.name not in ("html", "body", "main") and tag.find("h1") is None


def _main_region(soup):
    """The page's one <main> / [role=main] element, with the page's h1 put first if it sits outside;
    None when there is no single one holding at least a quarter of the page's text."""
    mains = soup.find_all(lambda t: t.name == "main" or t.get("role") == "main")
    mains = [m for m in mains if not any(p is n for n in mains for p in m.parents)]  # outermost only
    if len(mains) != 1 or len(mains[0].get_text()) < len(soup.get_text()) / 4:
        return None
    main, h1 = mains[0], soup.find("h1")
    if h1 is not None and not any(p is main for p in h1.parents):
        main.insert(0, h1.extract())
    return main


def _html_to_text(html: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    deepest = _nesting(soup)
    if deepest > MAX_HTML_NESTING:
        raise _Refused(f"elements nested {deepest} deep (limit {MAX_HTML_NESTING})")
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        tag.decompose()
    main = _main_region(soup)
    root = main if main is not None else soup
    for tag in [t for t in root.find_all(True) if _is_chrome(t, in_main=main is not None)]:
        tag.extract()  # not decompose(): a tag inside one already dropped must stay safe to touch
    for tag in root("a"):
        if tag.get_text(strip=True) == "\N{PILCROW SIGN}":  # heading permalinks (Sphinx, MkDocs)
            tag.decompose()
    # A heading is a paragraph of its own (the chunker splits paragraphs on blank lines); other
    # block elements end a line; inline ones (em, code, a) stay inside their sentence.
    for tag in root(HEADINGS):
        tag.insert_before("\n\n")
        tag.append("\n\n")
    for tag in root(BLOCK_TAGS):
        tag.append("\n")
    return root.get_text()


def _declares_entities(source: str, anywhere: bool) -> bool:
    """A DOCTYPE with an internal subset declaring entities: in HTML wherever the first DOCTYPE is,
    in Markdown only opening the file (further down it is a tutorial's example). Linear: one find
    and bounded matches."""
    at = source.lower().find("<!doctype") if anywhere else len(source) - len(source.lstrip())
    if at < 0 or not _DOCTYPE_SUBSET.match(source, at):
        return False
    return "<!entity" in source[at:at + 65536].lower()


def _nesting(soup) -> int:
    """How deep the elements nest, in one pass (descendants come in document order, parents first)."""
    depth, deepest = {id(soup): 0}, 0
    for node in soup.descendants:
        if node.name is not None:
            depth[id(node)] = depth[id(node.parent)] + 1
            deepest = max(deepest, depth[id(node)])
    return deepest


def _markdown_nesting(source: str) -> int:
    """The deepest line's count of container markers (block quotes, list items), its indentation
    counting as levels when it is a list item itself."""
    deepest = 0
    for line in source.split("\n"):
        count, at = 0, 0
        markers = _MARKDOWN_CONTAINERS.match(line)
        while markers and count <= MAX_MARKDOWN_NESTING:  # past the limit the answer is known
            count, at = count + 1, markers.end()
            markers = _MARKDOWN_CONTAINERS.match(line, at)
        if count:
            indent = len(line) - at - len(line[at:].lstrip(" \t"))
            deepest = max(deepest, count + indent // 2)
    return deepest


def _markdown_to_text(source: str) -> str:
    from markdown_it import MarkdownIt

    deepest = _markdown_nesting(source)
    if deepest > MAX_MARKDOWN_NESTING:
        raise _Refused(f"blocks nested {deepest} deep (limit {MAX_MARKDOWN_NESTING})")
    # Render with raw HTML disabled, then take the text: code, lists and headings keep their words.
    # maxNesting is well above the limit above, so no accepted block is cut.
    return _html_to_text(MarkdownIt("commonmark", {"html": False, "maxNesting": 4 * MAX_MARKDOWN_NESTING}).render(source))


def _pdf_to_text(data: bytes) -> str:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        raise _Refused("encrypted PDF")
    if _active_content(reader):
        raise _Refused("PDF with active content (JavaScript or a launch action)")
    pages = []
    for page in reader.pages:
        # extract_text logs and skips a stream over pypdf's limits: inflate it here first, so a
        # decompression bomb is refused by name instead of read as a page without text
        contents = page.get_contents()
        if contents is not None:
            contents.get_data()
        pages.append([" ".join(line.split()) for line in (page.extract_text() or "").split("\n")])
    return _reflow([line for page in _drop_page_furniture(pages) for line in page if line])


_ACTIVE = {"/JavaScript", "/Launch", "/ImportData", "/SubmitForm"}


def _active_content(reader) -> bool:
    """Whether the PDF runs something when opened or used: document-level scripts, an open or
    additional action, or a link or form field whose action is a script or a program launch."""
    def resolved(value):
        return value.get_object() if hasattr(value, "get_object") else value

    def active(action, hops: int = 0) -> bool:
        """An action, or one chained after it through /Next (an array or one action), that runs something."""
        action = resolved(action)
        if hops > 64:  # a /Next chain this long (or a loop) is not a document's
            return True
        if isinstance(action, list):
            return any(active(item, hops + 1) for item in action)
        if not hasattr(action, "get"):
            return False
        return action.get("/S") in _ACTIVE or "/JS" in action or active(action.get("/Next"), hops + 1)

    def triggers(holder) -> bool:
        """/AA: additional actions (on open, close, key strokes, field formatting...)."""
        holder = resolved(holder)
        extra = resolved(holder.get("/AA")) if hasattr(holder, "get") else None
        return hasattr(extra, "values") and any(active(action) for action in extra.values())

    root = resolved(reader.trailer["/Root"])
    names = resolved(root.get("/Names"))
    if hasattr(names, "get") and "/JavaScript" in names:
        return True
    if active(root.get("/OpenAction")) or triggers(root):
        return True
    for page in reader.pages:
        if triggers(page):
            return True
        for annotation in resolved(page.get("/Annots")) or []:
            annotation = resolved(annotation)
            if hasattr(annotation, "get") and (active(annotation.get("/A")) or triggers(annotation)):
                return True
    form = resolved(root.get("/AcroForm"))
    fields = resolved(form.get("/Fields")) if hasattr(form, "get") else None
    return any(triggers(field) or active(resolved(field).get("/A")) for field in fields or []
               if hasattr(resolved(field), "get"))


# A PDF's text comes out one printed line at a time, with each page's running head and foot (title,
# chapter name, page number) in it. Chunked as is, those are noise inside the chunks, words stay cut
# at line-end hyphens, and a heading reads as the start of the next sentence. The rules below are
# the generic ones of printed layout, not one producer's.
_EDGE = 2  # lines at the top and at the bottom of a page that may be running heads/feet
_PAGE_NUMBER = re.compile(r"[-–—(\[ ]*(page )?(\d+|[ivxlc]+)( ?(/|of) ?\d+)?[-–—)\] ]*", re.IGNORECASE)
_BULLET = re.compile(r"[•◦▪‣∙·*–-]")
_TOC_ENTRY = re.compile(r"\s*(\.\s?){4,}\s*(\d+|[ivxlc]+)$", re.IGNORECASE)  # "Introduction ...... 3"
_NUMBERED = re.compile(r"\(?(\d+|[a-z])[.)]\s")  # "3. Item", "(a) item", "2) item"


def _edge_key(line: str) -> str:
    """Page numbers ("7", "-iv-", "Page 3 of 9") are one key, and digits in a line are one digit:
    "3 Introduction" and "4 Introduction" are the same running head."""
    return "#" if _PAGE_NUMBER.fullmatch(line) else re.sub(r"\d+", "#", line.lower())


def _drop_page_furniture(pages: list[list[str]]) -> list[list[str]]:
    """Drop running heads/feet and page numbers: lines found at the same edge (first or last two
    lines) of at least a quarter of the pages, 3 pages at least. A lone number at the edge of only a
    few pages is content (a table's last row, a code example's output). The first page keeps its
    heads: a running head usually repeats the title, which is content there."""
    pages = [[line for line in page if line] for page in pages]
    seen: dict[tuple[str, str], set[int]] = {}
    for number, page in enumerate(pages):
        for edge, lines in (("top", page[:_EDGE]), ("bottom", page[-_EDGE:])):
            for line in lines:
                seen.setdefault((edge, _edge_key(line)), set()).add(number)
    least = max(3, len(pages) / 4)
    running = {key for key, numbers in seen.items() if len(numbers) >= least}
    out = []
    for number, page in enumerate(pages):
        n = len(page)

        def furniture(i: int, line: str) -> bool:
            key = _edge_key(line)
            at = (["top"] if i < _EDGE else []) + (["bottom"] if i >= n - _EDGE else [])
            return (number > 0 or key == "#") and any((edge, key) in running for edge in at)

        out.append([line for i, line in enumerate(page) if not furniture(i, line)])
    return out


def _hyphen_evidence(left: str, right: str, words: set[str], hyphenated: set[str]) -> str:
    """What the document itself says of "left-" + "right" cut at a line end: "whole" when it uses
    the joined word elsewhere, "compound" when it uses the hyphenated form or both halves as words,
    else "unknown" ("docu-" + "ment", or "pre-" + "formatted")."""
    if (left + right).lower() in words:
        return "whole"
    if f"{left}-{right}".lower() in hyphenated or (left.lower() in words and right.lower() in words):
        return "compound"
    return "unknown"


def _reflow(lines: list[str]) -> str:
    """Join a paragraph's printed lines into one line, re-join words cut at a line-end hyphen, and
    put a blank line where a paragraph or a heading ends (the chunker splits paragraphs on blank
    lines only; a heading left on the next line is read as the start of the next sentence)."""
    if not lines:
        return ""
    cut_at = re.compile(r"(\w+)-$")
    cuts = [(cut_at.search(lines[i]).group(1), lines[i + 1].split()[0]) for i in range(len(lines) - 1)
            if cut_at.search(lines[i]) and lines[i + 1][:1].isalpha()]
    # The document's own vocabulary, without the halves of the words cut at a line end.
    text = "\n".join(lines)
    for left, right in cuts:
        text = text.replace(f"{left}-\n{right}", " ")
    words = set(re.findall(r"\w+", text.lower()))
    hyphenated = set(re.findall(r"\w+(?:-\w+)+", text.lower()))
    # A typesetter that cuts words at syllables (TeX, FOP) leaves more cuts that the document spells
    # whole elsewhere than compounds; a plain line wrapper (textwrap, ragged right) cuts only at real
    # hyphens. That decides the cuts the document says nothing about. A capital after the cut
    # ("FA-" + "STS-000157") is not a syllable.
    evidence = [_hyphen_evidence(left, right, words, hyphenated) for left, right in cuts]
    syllables = evidence.count("whole") > evidence.count("compound")

    def join(left: str, right: str) -> str:
        found = _hyphen_evidence(left, right, words, hyphenated)
        whole = found == "whole" or (found == "unknown" and syllables and not right[0].isupper())
        return left + right if whole else f"{left}-{right}"

    # A line well short of a full one (the 90th percentile of lengths) ends a paragraph or is a heading.
    short = 0.7 * sorted(len(line) for line in lines)[int(len(lines) * 0.9)]
    out = _drop_leader(lines[0])
    for prev, line in zip(lines, lines[1:]):
        cut = cut_at.search(prev)
        if cut and line[:1].isalpha():
            right, _, rest = line.partition(" ")
            out = out[: -len(cut.group(0))] + join(cut.group(1), right)
            out += f" {_drop_leader(rest)}" if rest else ""
            continue
        capital = line[:1].isupper() or line[:1].isdigit() or line[:1] in "\"'“‘(["
        toc = bool(_TOC_ENTRY.search(prev)), bool(_TOC_ENTRY.search(line))
        if toc[0] != toc[1]:
            sep = "\n\n"  # a table of contents is a paragraph of its own
        elif all(toc) or _BULLET.match(line):
            sep = "\n"  # a table-of-contents entry or a list item keeps its own line
        elif len(prev) < short and capital:
            sep = "\n\n"  # a short line, then a capital: a paragraph or a heading has ended
        elif prev[-1] in ".!?:" and len(line) < short and capital and line[-1] not in ".,;:":
            sep = "\n\n"  # a short unpunctuated line after a full stop: a heading
        elif prev[-1] in ".!?:;" and _NUMBERED.match(line):
            sep = "\n"  # "2. The next item" after a full stop: a numbered item or footnote
        elif len(prev) < short and prev[-1] == ":":
            sep = "\n"  # "run this command as root:" before a line of code
        else:
            sep = " "
        out += sep + _drop_leader(line)
    return out


def _drop_leader(line: str) -> str:
    """"Introduction ........ 3" -> "Introduction 3": dot leaders are most of a contents page's tokens."""
    return _TOC_ENTRY.sub(r" \2", line)


class _Refused(Exception):
    pass


def parse_document(doc_id: str, data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> ParsedDocument | Quarantined:
    size = len(data)

    def quarantine(reason: str) -> Quarantined:
        return Quarantined(doc_id, reason, size)

    fmt = FORMATS.get(PurePosixPath(doc_id).suffix.lower())
    if fmt is None:
        return quarantine(f"unsupported file type {PurePosixPath(doc_id).suffix or '(none)'!r}")
    if size == 0:
        return quarantine("empty file")
    if size > max_bytes:
        return quarantine(f"oversized: {size} bytes > limit {max_bytes}")
    try:
        if fmt == "pdf":
            if not data.startswith(b"%PDF-"):
                return quarantine("not a PDF (missing %PDF- header)")
            from pypdf import apply_configuration
            from pypdf.errors import LimitReachedError

            try:
                with apply_configuration(zlib_maximum_output_length=MAX_PDF_STREAM_BYTES,
                                             lzw_maximum_output_length=MAX_PDF_STREAM_BYTES,
                                             run_length_maximum_output_length=MAX_PDF_STREAM_BYTES):
                    raw_text = _pdf_to_text(data)
            except LimitReachedError as err:
                return quarantine(f"a PDF stream expands beyond its limit ({MAX_PDF_STREAM_BYTES} bytes): {err}")
        else:
            if _looks_binary(data):
                return quarantine("binary content in a text document")
            try:
                source = _decode(data)
            except UnicodeDecodeError as err:
                return quarantine(f"invalid UTF-8 at byte {err.start}")
            if fmt != "text" and _declares_entities(source, anywhere=fmt == "html"):
                return quarantine("entity declarations in a DOCTYPE (an entity-expansion bomb)")
            raw_text = {"text": lambda s: s, "markdown": _markdown_to_text, "html": _html_to_text}[fmt](source)
    except _Refused as err:
        return quarantine(str(err))
    except Exception as err:  # a hostile or broken file: any parser failure is a quarantine reason
        return quarantine(f"unreadable {fmt}: {err.__class__.__name__}: {str(err)[:200]}")
    text = normalise_text(raw_text)
    if not text:
        return quarantine("no extractable text")
    return ParsedDocument(doc_id, fmt, text, hashlib.sha256(data).hexdigest(), size)
