import functools
import io
import re
from pathlib import Path

import pytest

from datacreek_assets.ingest.parsing import ParsedDocument, Quarantined, normalise_text, parse_document
from datacreek_assets.ingest.simple_pdf import text_pdf


def parsed(doc_id, data, **kw) -> ParsedDocument:
    result = parse_document(doc_id, data, **kw)
    assert isinstance(result, ParsedDocument), result
    return result


def quarantined(doc_id, data, **kw) -> str:
    result = parse_document(doc_id, data, **kw)
    assert isinstance(result, Quarantined), result
    return result.reason


def test_plain_markdown_html_pdf_are_parsed_to_text():
    assert parsed("a.txt", b"Hello  world.\r\n\r\n\r\nBye.").text == "Hello world.\n\nBye."
    md = parsed("a.md", b"# Title\n\nSome *bold* text and `code`.\n\n- item one\n").text
    assert "Title" in md and "Some bold text and code." in md and "item one" in md and "*" not in md
    html = parsed("a.html", b"<html><head><script>alert(1)</script></head><body><p>Kept &amp; shown</p><style>x{}</style></body></html>").text
    assert html == "Kept & shown"
    pdf = parsed("a.pdf", text_pdf("The pathlib module offers classes.\nSecond line."))
    assert "pathlib module offers classes" in pdf.text and pdf.format == "pdf"


def test_content_hash_is_of_the_raw_bytes():
    a, b = parsed("a.txt", b"same text"), parsed("b.txt", b"same text ")
    assert a.content_hash != b.content_hash and len(a.content_hash) == 64


@pytest.mark.parametrize(
    "doc_id,data,reason",
    [
        ("empty.txt", b"", "empty file"),
        ("junk.txt", bytes(range(256)) * 8, "binary content"),
        ("latin1.md", "café".encode("latin-1"), "invalid UTF-8"),
        ("fake.pdf", b"this is not a pdf", "not a PDF"),
        ("trunc.pdf", b"%PDF-1.4\n1 0 obj <<", "unreadable pdf"),
        ("blank.html", b"<html><body>   </body></html>", "no extractable text"),
        ("a.docx", b"PK\x03\x04", "unsupported file type"),
    ],
)
def test_broken_documents_are_quarantined_with_a_reason(doc_id, data, reason):
    assert reason in quarantined(doc_id, data)


def test_oversized_documents_are_quarantined():
    assert "oversized" in quarantined("big.txt", b"x" * 2000, max_bytes=1000)


def test_encrypted_pdf_is_quarantined():
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(io.BytesIO(text_pdf("secret text"))).pages:
        writer.add_page(page)
    writer.encrypt("pw")
    out = io.BytesIO()
    writer.write(out)
    assert quarantined("enc.pdf", out.getvalue()) == "encrypted PDF"


def test_normalise_text_removes_controls_and_folds_compatibility_forms():
    assert normalise_text("ﬁle\x07 name\t\tx\n\n\n\ny") == "file name x\n\ny"


# ---------------------------------------------------------------- HTML: page chrome dropped, content kept
PAGES = Path(__file__).resolve().parents[1] / "data" / "html_pages"  # real doc pages, see SOURCES.md
SPHINX_PAGES = sorted((PAGES / "python").glob("*.html"))
POSTGRES_PAGES = sorted((PAGES / "postgresql").glob("*.html"))


def page_text(path: Path) -> str:
    return parsed(path.name, path.read_bytes()).text


def test_the_real_pages_are_there():
    assert len(SPHINX_PAGES) == 8 and len(POSTGRES_PAGES) == 8


@pytest.mark.parametrize("path", SPHINX_PAGES, ids=lambda p: p.name)
def test_sphinx_page_loses_its_navigation_but_keeps_title_and_code(path):
    from bs4 import BeautifulSoup

    text = page_text(path)
    for chrome in ("Previous topic", "Next topic", "Show Source", "Report a Bug", "This Page", "Copyright"):
        assert chrome not in text, chrome
    main = BeautifulSoup(path.read_bytes(), "html.parser").find(attrs={"role": "main"})
    h1 = " ".join(main.h1.get_text().replace("\N{PILCROW SIGN}", "").split())
    assert text.startswith(h1 + "\n\n")  # the title is a paragraph of its own, first
    assert normalise_text(main.pre.get_text()) in text  # the first code block, line by line
    assert "\N{PILCROW SIGN}" not in text  # heading permalinks


@pytest.mark.parametrize("path", POSTGRES_PAGES, ids=lambda p: p.name)
def test_postgres_page_loses_prev_up_home_next_but_keeps_its_title(path):
    from bs4 import BeautifulSoup

    text = page_text(path)
    assert not {"Prev", "Up", "Home", "Next"} & set(text.split())
    title = normalise_text(BeautifulSoup(path.read_bytes(), "html.parser").title.get_text())
    assert text.split("\n")[0] == title


def test_section_ids_that_look_like_chrome_are_kept_and_the_footer_is_dropped():
    text = page_text(PAGES / "git" / "git-bisect.html")  # <div class="sect2"><h3 id="_bisect_skip">
    assert "\n\nBisect skip\n\n" in text and "Last updated" not in text


def test_table_cells_and_headings_are_separated():
    html = (b"<p>Intro.</p><h2>Usage</h2>"
            b"<table><tr><th>name</th><th>value</th></tr><tr><td>a</td><td>1</td></tr></table>")
    assert parsed("t.html", html).text == "Intro.\n\nUsage\n\nname\nvalue\n\na\n1"


def test_main_region_keeps_outside_h1_and_inside_footnotes_drops_the_rest():
    body = "Body text of the article, long enough to be most of the page. " * 3
    html = (f"<body><header><h1>The Title</h1></header><div class='nav-bar'>Home About</div><main><p>{body}</p>"
            f"<aside class='footnote'>[1] A footnote.</aside></main><aside>Related posts</aside>"
            f"<footer>Site footer</footer></body>").encode()
    assert parsed("m.html", html).text == f"The Title\n\n{body.strip()}\n[1] A footnote."


def test_without_main_page_header_footer_and_menus_go_but_article_headers_stay():
    html = (b"<body><header>Site name</header><ul class='menu'><li>Home</li></ul><article><header><h2>Post</h2>"
            b"</header><p>Kept text.</p></article><div role='contentinfo'>Contact</div><footer>Bye</footer></body>")
    assert parsed("n.html", html).text == "Post\n\nKept text."


def test_demo_corpus_html_pages_lose_nothing():
    from datacreek_assets.demo_corpus import MODULES, module_text, write_demo_corpus

    class Store(dict):
        put = dict.__setitem__

    store = Store()
    write_demo_corpus(store, max_docs=12)
    names = {f"inbox/{name.replace('.', '_')}.html": name for name in MODULES}
    pages = [key for key in store if key.endswith(".html")]
    assert len(pages) == 3
    for key in pages:
        title, body = module_text(names[key])
        assert parsed(key, store[key]).text == normalise_text(f"{title}\n\n{body}")


# ---------------------------------------------------------------- PDF: page furniture dropped, lines reflowed
PDFS = Path(__file__).resolve().parents[1] / "data" / "pdf"  # real manuals, see SOURCES.md
BARE_NUMBER = re.compile(r"[-–(\[ ]*(\d+|[ivxlc]+)[-–)\] ]*", re.IGNORECASE)
# Per PDF, read off its pages: sentences that cross a line end, a page break (with its running head
# or page number in between) or a word cut at a line end.
SENTENCES = {
    "xorg-security-analysis": [
        "Theft occurs when a client gains access to information owned by another client without explicit "
        "permission from that other client.",  # "with-/out"
        "The defense centers on providing enough information to enable the user to know where keyboard, mouse, "
        "and extension device input is going.",  # across pages 15-16 and their running head
        "Similarly, a client could SendEvent to one of its own windows with propagate set to True and arrange for "
        "the event to be propogated up to a window it does not own.",  # across pages 19-20
    ],
    "groff-pdfmark": [
        "The document outline may be considered as a collection of “hypertext” references to “bookmarked” "
        "locations within the document.",
        "entries will be defined later in the document source, and the appropriate /Count value will be "
        "unknown, when defining the parent entry.",  # across pages 5-6 ("-4-"); the start is garbled by pypdf
        "then the user must ensure that these are computed before invoking the pdfhref macro.",  # "-5-"
    ],
}


@functools.cache
def pdf_text(name: str) -> str:
    return parsed(f"{name}.pdf", (PDFS / f"{name}.pdf").read_bytes()).text


def test_the_real_pdfs_are_there():
    assert sorted(p.stem for p in PDFS.glob("*.pdf")) == sorted(SENTENCES)


@pytest.mark.parametrize("name", sorted(SENTENCES))
def test_pdf_has_no_page_numbers_and_keeps_known_sentences_on_one_line(name):
    lines = pdf_text(name).split("\n")
    assert not [line for line in lines if BARE_NUMBER.fullmatch(line)]
    for sentence in SENTENCES[name]:
        assert any(sentence in line for line in lines), sentence


def test_fop_manual_loses_its_chapter_running_head_but_keeps_the_chapter_title():
    text = pdf_text("xorg-security-analysis")
    lines = text.split("\n")
    # "Security concerns" / "with specific requests" heads 15 pages; as content it is a chapter title
    # and a contents entry only.
    assert "Security concerns" not in lines and "with specific requests" not in lines
    assert [line for line in lines if "Security concerns with specific requests" in line] == [
        "4. Security concerns with specific requests 7", "Chapter 4. Security concerns with specific requests"]
    assert text.startswith("Analysis of the X Protocol for Security Concerns\n\n")  # the title page keeps it
    assert "\n\nChapter 4. Security concerns with specific requests\n\nTo reduce the space" in text
    assert "\n\nCPU Monopolization\n\nAnother general way" in text  # a heading is a paragraph of its own
    assert "....." not in text  # contents entries without their dot leaders


def test_words_cut_at_syllables_are_rejoined_and_real_hyphens_kept():
    fop = pdf_text("xorg-security-analysis")  # FOP hyphenates at syllables
    assert "CirculateWindow" in fop and "Circu-" not in fop and "back-ground" not in fop
    assert "Technical Advisory FA-STS-001324" in fop  # a hyphen of the reference number, not a syllable
    groff = pdf_text("groff-pdfmark")  # here every word cut at a line end is a real compound
    for compound in ("co-ordinates", "hot-spot", "pre-empting", "meta-data", "vice-versa"):
        assert compound in groff, compound


def test_running_heads_repeated_on_most_pages_and_page_numbers_are_dropped():
    body = [f"The {word} paragraph says something about widgets and the parts they are made of." for word in
            ("first", "second", "third", "fourth", "fifth")]
    pages = [["Widget Manual"] + [body[n]] * 6 + [str(n + 1)] for n in range(5)]
    text = parsed("m.pdf", text_pdf("\n".join(line for page in pages for line in page), lines_per_page=8)).text
    assert text.count("Widget Manual") == 1 and text.startswith("Widget Manual\n\n")
    assert not [line for line in text.split("\n") if BARE_NUMBER.fullmatch(line)]
    expected = "Widget Manual\n" + "\n".join(line for line in body for _ in range(6))
    assert re.findall(r"\w+", text) == re.findall(r"\w+", expected)
    # A number or a repeated line at the edge of a page or two is content.
    two_pages = text_pdf("Totals\n" + "row\n" * 6 + "42\n" + "Totals\n" + "row\n" * 6 + "7", lines_per_page=8)
    assert re.findall(r"\w+", parsed("t.pdf", two_pages).text) == ["Totals"] + ["row"] * 6 + ["42", "Totals"] + [
        "row"] * 6 + ["7"]


@pytest.mark.parametrize("module", ["json", "logging", "collections", "http.client", "statistics"])
def test_demo_corpus_pdfs_lose_nothing(module):
    # logging has "pre-formatted" wrapped at its hyphen; collections and statistics a doctest result
    # and http.client a "v" (an arrow) alone on a page's first or last line.
    from datacreek_assets.demo_corpus import module_text

    title, body = module_text(module)
    source = f"The {title} module\n\n{body}"
    text = parsed(f"{module}.pdf", text_pdf(source)).text
    expected = normalise_text(source.encode("latin-1", "replace").decode("latin-1"))  # text_pdf is Latin-1
    assert re.findall(r"\w+", text) == re.findall(r"\w+", expected)
    assert "\n\n" in text  # paragraphs come back (pypdf returns no blank lines)
