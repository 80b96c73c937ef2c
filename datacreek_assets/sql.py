"""One way to open the project's SQLAlchemy stores (SQLite locally, Postgres in prod)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, inspect
from sqlalchemy.exc import DBAPIError


def open_store(url: str, metadata) -> Engine:
    """An engine for `url` with `metadata`'s tables created; a SQLite file's folder is made.
    A table made by an older version gains the nullable columns added since (the one kind of
    schema change these stores make: a new column is nullable, so old rows stay valid)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, future=True)
    metadata.create_all(engine)
    _add_new_columns(engine, metadata)
    return engine


def _add_new_columns(engine: Engine, metadata) -> None:
    inspector = inspect(engine)
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name, schema=table.schema)}
        missing = [column for column in table.columns if column.name not in present]
        if not missing:
            continue
        if any(not column.nullable for column in missing):
            raise RuntimeError(f"table {table.name} lacks non-nullable columns {[c.name for c in missing]}: "
                               "it was made by an incompatible version")
        name = engine.dialect.identifier_preparer.format_table(table)
        for column in missing:
            kind = column.type.compile(dialect=engine.dialect)
            try:
                with engine.begin() as connection:
                    connection.exec_driver_sql(f"ALTER TABLE {name} ADD COLUMN "
                                               f"{engine.dialect.identifier_preparer.quote(column.name)} {kind}")
            except DBAPIError:  # another process starting at the same moment added it first
                if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name, schema=table.schema)}:
                    raise
