"""One way to open the project's SQLAlchemy stores (SQLite locally, Postgres in prod)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine


def open_store(url: str, metadata) -> Engine:
    """An engine for `url` with `metadata`'s tables created; a SQLite file's folder is made."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, future=True)
    metadata.create_all(engine)
    return engine
