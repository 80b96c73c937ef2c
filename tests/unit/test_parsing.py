import io

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
