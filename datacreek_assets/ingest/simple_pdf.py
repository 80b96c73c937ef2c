"""Write a small, valid text PDF (Helvetica, one page per ~45 lines).

Used by the demo corpus and tests to produce real PDFs that pypdf parses,
without a PDF-writing dependency.
"""

from __future__ import annotations

import textwrap


def _escape(line: str) -> str:
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def text_pdf(text: str, lines_per_page: int = 45) -> bytes:
    lines = []
    for paragraph in text.splitlines():
        lines.extend(textwrap.wrap(paragraph.encode("latin-1", "replace").decode("latin-1"), 90) or [""])
    pages = [lines[i : i + lines_per_page] for i in range(0, max(1, len(lines)), lines_per_page)] or [[""]]
    objects: list[bytes] = []
    n_pages = len(pages)
    # 1: catalog, 2: pages, 3: font, then (page, content) pairs
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n_pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    for i, page in enumerate(pages):
        stream = "BT /F1 10 Tf 12 TL 50 800 Td\n" + "".join(f"({_escape(l)}) Tj T*\n" for l in page) + "ET"
        data = stream.encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(data) + data + b"\nendstream")
    return pdf_file(objects)


def pdf_file(objects: list[bytes], trailer: bytes = b"") -> bytes:
    """A PDF file from numbered object bodies (1 is the catalog), with a correct xref table;
    ``trailer`` adds entries to the trailer dictionary."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, trailer + b" " if trailer else b"", xref)
    return bytes(out)
