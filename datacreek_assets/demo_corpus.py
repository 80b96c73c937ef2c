"""The demo corpus: real English text available offline on any machine.

Module, class and function docstrings of the Python standard library are
extracted at demo time and written to the tenant's inbox as Markdown, plain
text, HTML and PDF, plus two deliberately broken files so the quarantine path
is visible in the demo.
"""

from __future__ import annotations

import html
import importlib
import inspect

from datacreek_assets.ingest.simple_pdf import text_pdf
from datacreek_assets.object_store import TenantObjectStore

MODULES = [
    "json", "csv", "logging", "pathlib", "datetime", "collections", "functools", "itertools", "argparse",
    "sqlite3", "http.client", "urllib.parse", "re", "string", "textwrap", "heapq", "bisect", "statistics",
    "decimal", "fractions", "random", "hashlib", "hmac", "secrets", "base64", "zipfile", "tarfile", "gzip",
    "shutil", "tempfile", "subprocess", "threading", "queue", "asyncio", "socket", "email", "html.parser",
    "xml.etree.ElementTree", "unittest", "doctest", "pdb", "timeit", "calendar", "uuid", "ipaddress",
    "enum", "dataclasses", "typing", "contextlib", "abc", "copy", "pprint", "difflib", "operator",
]


def module_text(name: str, max_members: int = 12) -> tuple[str, str]:
    module = importlib.import_module(name)
    parts = [inspect.getdoc(module) or ""]
    members = 0
    for attr, value in sorted(vars(module).items()):
        if attr.startswith("_") or getattr(value, "__module__", None) != module.__name__:
            continue
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        doc = inspect.getdoc(value)
        if doc and len(doc) > 80:
            parts.append(f"{attr}\n\n{doc}")
            members += 1
        if members >= max_members:
            break
    return name, "\n\n".join(p for p in parts if p)


def write_demo_corpus(store: TenantObjectStore, max_docs: int = 40) -> list[str]:
    written = []
    for i, name in enumerate(MODULES[:max_docs]):
        title, body = module_text(name)
        if not body.strip():
            continue
        kind = ("md", "txt", "html", "pdf")[i % 4]
        if kind == "md":
            data = f"# The {title} module\n\n{body}\n".encode()
        elif kind == "txt":
            data = f"The {title} module\n\n{body}\n".encode()
        elif kind == "html":
            paragraphs = "".join(f"<p>{html.escape(p)}</p>\n" for p in body.split("\n\n"))
            data = f"<html><head><title>{title}</title><style>p{{}}</style></head><body><h1>{title}</h1>\n{paragraphs}</body></html>".encode()
        else:
            data = text_pdf(f"The {title} module\n\n{body}")
        key = f"inbox/{title.replace('.', '_')}.{kind}"
        store.put(key, data)
        written.append(key)
    store.put("inbox/broken_binary.txt", bytes(range(256)) * 4)
    store.put("inbox/broken_encoding.md", "caf\u00e9 au lait".encode("latin-1") + b"\xff\xfe")
    written += ["inbox/broken_binary.txt", "inbox/broken_encoding.md"]
    return written
