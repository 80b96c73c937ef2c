"""The review store (SQLAlchemy; SQLite locally, Postgres in prod): each tenant's edge review
queue as `edge_review_queue` last wrote it, the curator keys that open it, and each tenant's τ.

A queue is replaced whole in one transaction (a failed write leaves the previous queue); a
decision marks its row decided so the page moves on without waiting for the next queue. Curator
keys are kept as SHA-256 only, like the serving API keys, and name a tenant and a curator."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Boolean, DateTime, Float, Integer, String, Text, delete, func, or_, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from datacreek_assets.curation.decisions import valid_curator
from datacreek_assets.curation.queue import COOCCURS, QueueItem
from datacreek_assets.sql import open_store
from datacreek_assets.tenancy import validate_tenant_id

CURATOR_KEY_PREFIX = "dcc_"
STATUSES = ("open", "decided", "all")


class _Base(DeclarativeBase):
    pass


class QueueRow(_Base):
    __tablename__ = "edge_review_queue"
    tenant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    fact_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, index=True)
    queue_version: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(Text)
    predicate: Mapped[str] = mapped_column(Text)
    object: Mapped[str] = mapped_column(Text)
    sentence: Mapped[str] = mapped_column(Text)
    chunk_text: Mapped[str] = mapped_column(Text)
    doc_id: Mapped[str] = mapped_column(Text)
    chunk_id: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)  # the fact's version when queued (what a decision names)
    delta_lambda: Mapped[float] = mapped_column(Float)
    deltas: Mapped[str] = mapped_column(Text)  # JSON: Δ of each of the k smallest eigenvalues
    exact: Mapped[bool] = mapped_column(Boolean)
    trusted: Mapped[bool] = mapped_column(Boolean)
    trust_reason: Mapped[str] = mapped_column(Text)
    confidence: Mapped[float] = mapped_column(Float)
    reasons: Mapped[str] = mapped_column(Text)  # JSON: why it is queued (structural, low_confidence...)
    neighbourhood: Mapped[str] = mapped_column(Text)  # JSON: [[entity, entity, weight], ...] around the edge
    subject_id: Mapped[str] = mapped_column(String(128))
    object_id: Mapped[str] = mapped_column(String(128))
    proposed: Mapped[bool] = mapped_column(Boolean)  # a co-occurrence a decision makes a fact
    decision: Mapped[str | None] = mapped_column(String(16), nullable=True)
    decided_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CuratorKeyRow(_Base):
    __tablename__ = "curator_keys"
    key_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(16), unique=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    curator: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TenantCurationRow(_Base):
    __tablename__ = "curation_settings"
    tenant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tau: Mapped[float] = mapped_column(Float)


@dataclass(frozen=True)
class QueuedEdge:
    fact_id: str
    rank: int
    queue_version: str
    subject: str
    predicate: str
    object: str
    sentence: str
    chunk_text: str
    doc_id: str
    chunk_id: str
    version: int
    delta_lambda: float
    deltas: list[float]
    exact: bool
    trusted: bool
    trust_reason: str
    confidence: float
    reasons: list[str]
    neighbourhood: list[list]
    decision: str | None
    decided_version: int | None
    subject_id: str
    object_id: str
    proposed: bool

    def proposal(self) -> dict | None:
        """What a decision on a proposed edge makes a fact of (``decisions.decide``)."""
        if not self.proposed:
            return None
        return {"subject_id": self.subject_id, "object_id": self.object_id, "chunk_id": self.chunk_id,
                "doc_id": self.doc_id, "sentence": self.sentence, "predicate": COOCCURS}

    @property
    def current_version(self) -> int:
        """The version a decision on this row names now (after one made from this page)."""
        return self.decided_version if self.decided_version is not None else self.version


@dataclass(frozen=True)
class Page:
    edges: list[QueuedEdge]
    total: int
    offset: int
    limit: int


def _edge(row: QueueRow) -> QueuedEdge:
    return QueuedEdge(row.fact_id, row.rank, row.queue_version, row.subject, row.predicate, row.object, row.sentence,
                      row.chunk_text, row.doc_id, row.chunk_id, row.version, row.delta_lambda, json.loads(row.deltas),
                      row.exact, row.trusted, row.trust_reason, row.confidence, json.loads(row.reasons),
                      json.loads(row.neighbourhood), row.decision, row.decided_version, row.subject_id, row.object_id,
                      row.proposed)


class ReviewStore:
    def __init__(self, url: str):
        self.engine = open_store(url, _Base.metadata)

    # -- the queue ----------------------------------------------------------
    def replace_queue(self, tenant_id: str, queue_version: str, items: list[QueueItem], chunk_texts: dict[str, str],
                      neighbourhoods: dict[str, list[list]], now: datetime | None = None) -> int:
        tenant_id = validate_tenant_id(tenant_id)
        at = now or datetime.now(timezone.utc)
        rows = [QueueRow(tenant_id=tenant_id, fact_id=i.fact_id, rank=rank, queue_version=queue_version,
                         subject=i.subject, predicate=i.predicate, object=i.object, sentence=i.sentence,
                         chunk_text=chunk_texts.get(i.chunk_id, ""), doc_id=i.doc_id, chunk_id=i.chunk_id,
                         version=i.version, delta_lambda=i.score, deltas=json.dumps(list(i.delta)), exact=i.exact,
                         trusted=i.trusted, trust_reason=i.reason, confidence=i.confidence,
                         reasons=json.dumps(list(i.reasons)), neighbourhood=json.dumps(neighbourhoods.get(i.fact_id, [])),
                         subject_id=i.subject_id, object_id=i.object_id, proposed=i.proposed,
                         decision=None, decided_version=None, queued_at=at)
                for rank, i in enumerate(items, 1)]
        with Session(self.engine) as session, session.begin():
            session.execute(delete(QueueRow).where(QueueRow.tenant_id == tenant_id))
            session.add_all(rows)
        return len(rows)

    def page(self, tenant_id: str, offset: int = 0, limit: int = 25, status: str = "open", text: str = "",
             predicate: str = "", min_delta: float | None = None, reason: str = "") -> Page:
        """One page of the tenant's queue, strongest Δλ first, filtered."""
        if status not in STATUSES:
            raise ValueError(f"status is one of {STATUSES}")
        where = [QueueRow.tenant_id == validate_tenant_id(tenant_id)]
        if status == "open":
            where.append(QueueRow.decision.is_(None))
        elif status == "decided":
            where.append(QueueRow.decision.is_not(None))
        if text:
            like = f"%{text.lower()}%"
            where.append(or_(func.lower(QueueRow.subject).like(like), func.lower(QueueRow.object).like(like),
                             func.lower(QueueRow.sentence).like(like)))
        if predicate:
            where.append(func.lower(QueueRow.predicate) == predicate.lower())
        if min_delta is not None:
            where.append(QueueRow.delta_lambda >= min_delta)
        if reason:
            where.append(QueueRow.reasons.like(f'%"{reason}"%'))
        with Session(self.engine) as session:
            total = session.scalar(select(func.count()).select_from(QueueRow).where(*where))
            rows = session.scalars(select(QueueRow).where(*where).order_by(QueueRow.rank).offset(offset).limit(limit))
            return Page([_edge(r) for r in rows], int(total or 0), offset, limit)

    def edge(self, tenant_id: str, fact_id: str) -> QueuedEdge | None:
        with Session(self.engine) as session:
            row = session.get(QueueRow, (validate_tenant_id(tenant_id), fact_id))
            return _edge(row) if row is not None else None

    def predicates(self, tenant_id: str) -> list[str]:
        with Session(self.engine) as session:
            return list(session.scalars(select(QueueRow.predicate).distinct()
                                        .where(QueueRow.tenant_id == validate_tenant_id(tenant_id))
                                        .order_by(QueueRow.predicate)))

    def mark(self, tenant_id: str, fact_id: str, decision: str | None, version: int, predicate: str | None = None) -> None:
        """A decision (or its undo, ``decision`` None) made on a queued edge: the page shows it."""
        values = {"decision": decision, "decided_version": version}
        if predicate is not None:
            values["predicate"] = predicate
        with Session(self.engine) as session, session.begin():
            session.execute(update(QueueRow).where(QueueRow.tenant_id == validate_tenant_id(tenant_id),
                                                   QueueRow.fact_id == fact_id).values(**values))

    def forget_documents(self, tenant_id: str, doc_ids: list[str]) -> int:
        """Erasure: queued edges quote their documents."""
        with Session(self.engine) as session, session.begin():
            return session.execute(delete(QueueRow).where(QueueRow.tenant_id == validate_tenant_id(tenant_id),
                                                          QueueRow.doc_id.in_(doc_ids))).rowcount

    def forget_tenant(self, tenant_id: str) -> None:
        tenant_id = validate_tenant_id(tenant_id)
        with Session(self.engine) as session, session.begin():
            for table in (QueueRow, CuratorKeyRow, TenantCurationRow):
                session.execute(delete(table).where(table.tenant_id == tenant_id))

    # -- τ --------------------------------------------------------------------
    def tau(self, tenant_id: str, default: float) -> float:
        with Session(self.engine) as session:
            row = session.get(TenantCurationRow, validate_tenant_id(tenant_id))
            return row.tau if row is not None else default

    def set_tau(self, tenant_id: str, tau: float) -> None:
        if not tau >= 0:
            raise ValueError(f"τ is a Δλ of at least 0, not {tau}")
        with Session(self.engine) as session, session.begin():
            session.merge(TenantCurationRow(tenant_id=validate_tenant_id(tenant_id), tau=float(tau)))

    # -- curator keys -----------------------------------------------------------
    def issue_key(self, tenant_id: str, curator: str) -> tuple[str, str]:
        """A new curator key: (key_id, key). Only its SHA-256 is kept."""
        tenant_id, curator = validate_tenant_id(tenant_id), valid_curator(curator)
        key = CURATOR_KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = secrets.token_hex(6)
        with Session(self.engine) as session, session.begin():
            session.add(CuratorKeyRow(key_sha256=hashlib.sha256(key.encode()).hexdigest(), key_id=key_id,
                                      tenant_id=tenant_id, curator=curator, created_at=datetime.now(timezone.utc)))
        return key_id, key

    def curator_for_key(self, key: str) -> tuple[str, str] | None:
        """(tenant, curator) the key names, or None."""
        if not key.startswith(CURATOR_KEY_PREFIX) or len(key) > 128:
            return None
        with Session(self.engine) as session:
            row = session.get(CuratorKeyRow, hashlib.sha256(key.encode()).hexdigest())
            return (row.tenant_id, row.curator) if row is not None else None

    def revoke_key(self, tenant_id: str, key_id: str) -> bool:
        with Session(self.engine) as session, session.begin():
            return session.execute(delete(CuratorKeyRow).where(CuratorKeyRow.tenant_id == validate_tenant_id(tenant_id),
                                                               CuratorKeyRow.key_id == key_id)).rowcount > 0

    def keys(self, tenant_id: str) -> list[tuple[str, str, datetime]]:
        with Session(self.engine) as session:
            rows = session.scalars(select(CuratorKeyRow).where(CuratorKeyRow.tenant_id == validate_tenant_id(tenant_id))
                                   .order_by(CuratorKeyRow.created_at))
            return [(r.key_id, r.curator, r.created_at) for r in rows]
