"""`edge_repair_log`: every curator decision, append-only (SQLAlchemy; SQLite locally, Postgres in
prod). A row says which edge, whose decision, the edge's state before and after, its Δλ when it
was decided, and the edge version the decision made; an undo is a row of its own that names the
row it undid."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, Float, Integer, String, Text, delete, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from datacreek_assets.sql import open_store
from datacreek_assets.tenancy import validate_tenant_id

DECISIONS = ("accept", "reject", "edit", "undo")


class _Base(DeclarativeBase):
    pass


class RepairRow(_Base):
    __tablename__ = "edge_repair_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    edge_id: Mapped[str] = mapped_column(String(128), index=True)
    curator: Mapped[str] = mapped_column(String(80))
    decision: Mapped[str] = mapped_column(String(16))
    before: Mapped[str] = mapped_column(Text)  # JSON: the edge's curated state
    after: Mapped[str] = mapped_column(Text)
    delta_lambda: Mapped[float | None] = mapped_column(Float, nullable=True)
    version: Mapped[int] = mapped_column(Integer)  # the edge's version after the decision
    undoes: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the row an undo reverted
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class RepairEntry:
    id: int
    tenant_id: str
    edge_id: str
    curator: str
    decision: str
    before: dict
    after: dict
    delta_lambda: float | None
    version: int
    undoes: int | None
    decided_at: datetime


class RepairLog:
    def __init__(self, url: str):
        self.engine = open_store(url, _Base.metadata)

    def session(self) -> Session:
        """A session whose row commits with the caller (``decisions`` commits it after the graph)."""
        return Session(self.engine)

    @staticmethod
    def add(session: Session, tenant_id: str, edge_id: str, curator: str, decision: str, before: dict, after: dict,
            delta_lambda: float | None, version: int, decided_at: datetime, undoes: int | None = None) -> RepairRow:
        if decision not in DECISIONS:
            raise ValueError(f"decision {decision!r} is not one of {DECISIONS}")
        row = RepairRow(tenant_id=validate_tenant_id(tenant_id), edge_id=edge_id, curator=curator, decision=decision,
                        before=json.dumps(before, sort_keys=True), after=json.dumps(after, sort_keys=True),
                        delta_lambda=delta_lambda, version=version, undoes=undoes, decided_at=decided_at)
        session.add(row)
        session.flush()  # its id, before the commit
        return row

    def entries(self, tenant_id: str, edge_id: str | None = None, limit: int = 100) -> list[RepairEntry]:
        """The tenant's decisions, newest first (one edge's with ``edge_id``)."""
        query = select(RepairRow).where(RepairRow.tenant_id == validate_tenant_id(tenant_id))
        if edge_id is not None:
            query = query.where(RepairRow.edge_id == edge_id)
        with Session(self.engine) as session:
            return [as_entry(r) for r in session.scalars(query.order_by(RepairRow.id.desc()).limit(limit))]

    def entry(self, tenant_id: str, entry_id: int) -> RepairEntry | None:
        """One of the tenant's rows (None for another tenant's: it is not theirs to see)."""
        with Session(self.engine) as session:
            row = session.get(RepairRow, entry_id)
            return as_entry(row) if row is not None and row.tenant_id == validate_tenant_id(tenant_id) else None

    def decisions_after(self, entry_id: int, limit: int = 1000) -> list[tuple[int, str]]:
        """(id, tenant) of every tenant's rows after ``entry_id``, oldest first: what the curation
        sensor turns into rebuilds."""
        with Session(self.engine) as session:
            return [tuple(r) for r in session.execute(select(RepairRow.id, RepairRow.tenant_id)
                                                      .where(RepairRow.id > entry_id).order_by(RepairRow.id).limit(limit))]

    def forget_tenant(self, tenant_id: str) -> int:
        """The tenant is removed: its log goes with it."""
        with Session(self.engine) as session, session.begin():
            return session.execute(delete(RepairRow).where(RepairRow.tenant_id == validate_tenant_id(tenant_id))).rowcount

    def undone(self, tenant_id: str, entry_id: int) -> bool:
        with Session(self.engine) as session:
            return session.scalars(select(RepairRow.id).where(RepairRow.tenant_id == validate_tenant_id(tenant_id),
                                                              RepairRow.undoes == entry_id)).first() is not None


def as_entry(row: RepairRow) -> RepairEntry:
    return RepairEntry(row.id, row.tenant_id, row.edge_id, row.curator, row.decision, json.loads(row.before),
                       json.loads(row.after), row.delta_lambda, row.version, row.undoes, row.decided_at)
