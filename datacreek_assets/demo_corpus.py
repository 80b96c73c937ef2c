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
import json
from pathlib import Path

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
    write_demo_questions(store, [m for m in MODULES[:max_docs]])
    store.put("inbox/broken_binary.txt", bytes(range(256)) * 4)
    store.put("inbox/broken_encoding.md", "caf\u00e9 au lait".encode("latin-1") + b"\xff\xfe")
    written += ["inbox/broken_binary.txt", "inbox/broken_encoding.md"]
    return written


# Questions a person wrote from the demo documents, each with its short answer and the passage it
# comes from (see the evaluation in finetune/pipeline.py).
DEMO_QUESTIONS = Path(__file__).with_name("demo_questions.jsonl")


def demo_questions(modules: list[str] | None = None) -> list[dict]:
    rows = [json.loads(line) for line in DEMO_QUESTIONS.read_text().splitlines() if line.strip()]
    return [r for r in rows if modules is None or r["module"] in modules]


def write_demo_questions(store: TenantObjectStore, modules: list[str]) -> int:
    """The tenant's own evaluation questions: those about the documents it was given."""
    from datacreek_assets.finetune.pipeline import TENANT_QUESTIONS_KEY

    rows = [{"question": r["question"], "answer": r["answer"]} for r in demo_questions(modules)]
    store.put(TENANT_QUESTIONS_KEY, "".join(json.dumps(r) + "\n" for r in rows).encode())
    return len(rows)


_DISHES = ["risotto", "minestrone", "ratatouille", "paella", "goulash", "tagine", "dal", "ramen", "chowder", "pho"]
_STEPS = ["Soak the {a} overnight and rinse it twice before cooking.",
          "Brown the {a} in olive oil, then add the {b} and a pinch of salt.",
          "Simmer the {a} with {b} for twenty minutes, stirring now and then.",
          "A good {dish} needs ripe {a}, fresh {b} and patience.",
          "Season the {dish} with {b} just before serving, never earlier.",
          "The {dish} keeps for three days in the fridge and freezes well.",
          "Serve the {dish} warm with crusty bread and a green salad."]
_INGREDIENTS = ["onions", "garlic", "tomatoes", "lentils", "chickpeas", "saffron", "paprika", "basil", "thyme",
                "carrots", "celery", "rice", "noodles", "ginger", "coriander", "lemon zest", "mushrooms"]


def write_drift_corpus(store: TenantObjectStore, docs: int = 60, seed: int = 0) -> list[str]:
    """Documents on a subject the demo tenant never had (recipes): new topics, so its embeddings drift."""
    import random

    rng = random.Random(seed)
    written = []
    for i in range(docs):
        dish = _DISHES[i % len(_DISHES)]
        lines = [f"# {dish.title()} notes {i}", ""]
        for _ in range(14):
            a, b = rng.sample(_INGREDIENTS, 2)
            lines.append(rng.choice(_STEPS).format(a=a, b=b, dish=dish))
        key = f"inbox/kitchen_{i:02d}_{dish}.md"
        store.put(key, "\n".join(lines).encode())
        written.append(key)
    return written


HOT_NEWS = {  # the real-time scene's documents: short, with entities that name each other
    "inbox/hot_rivers.md": "# Rivers\n\nThe Danube flows through Vienna, Bratislava and Budapest. The Rhine flows "
                           "through Basel, Strasbourg and Cologne. Vienna and Budapest trade along the Danube.",
    "inbox/hot_rail.md": "# Rail\n\nThe Orient Express ran from Paris through Vienna and Budapest. Trains from Basel "
                         "reach Cologne along the Rhine.",
}


def write_hot_corpus(store: TenantObjectStore) -> list[str]:
    """The documents that arrive during the demo's real-time scene."""
    for key, text in HOT_NEWS.items():
        store.put(key, text.encode())
    return sorted(HOT_NEWS)
