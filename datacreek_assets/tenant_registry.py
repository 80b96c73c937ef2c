"""The tenant registry: which tenants exist (SQLAlchemy; SQLite locally, Postgres in prod)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import DateTime, Integer, String, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from datacreek_assets.sql import open_store
from datacreek_assets.tenancy import validate_tenant_id


class _Base(DeclarativeBase):
    pass


class TenantRow(_Base):
    __tablename__ = "tenants"
    tenant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TenantChangeRow(_Base):
    """Append-only log of registry changes: what the partition-sync sensor follows with a
    watermark (the last ``seq`` it applied) instead of keeping the tenant set in its cursor."""

    __tablename__ = "tenant_changes"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    change: Mapped[str] = mapped_column(String(8))  # added | removed
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class TenantChange:
    seq: int
    tenant_id: str
    change: str


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    created_at: datetime


class TenantRegistry:
    def __init__(self, url: str):
        self.engine = open_store(url, _Base.metadata)

    def add(self, tenant_id: str) -> bool:
        """Register a tenant; return False if it already existed."""
        validate_tenant_id(tenant_id)
        with Session(self.engine) as session:
            if session.get(TenantRow, tenant_id) is not None:
                return False
            now = datetime.now(timezone.utc)
            session.add(TenantRow(tenant_id=tenant_id, created_at=now))
            session.add(TenantChangeRow(tenant_id=tenant_id, change="added", at=now))
            try:
                session.commit()
            except IntegrityError:  # a concurrent add won the race: still harmless
                return False
        return True

    def add_many(self, tenant_ids: list[str]) -> int:
        """Register many tenants in one transaction; return how many were new."""
        for tenant_id in tenant_ids:
            validate_tenant_id(tenant_id)
        now = datetime.now(timezone.utc)
        with Session(self.engine) as session:
            existing = set(session.scalars(select(TenantRow.tenant_id).where(TenantRow.tenant_id.in_(tenant_ids))))
            new = sorted(set(tenant_ids) - existing)
            session.add_all(TenantRow(tenant_id=t, created_at=now) for t in new)
            session.add_all(TenantChangeRow(tenant_id=t, change="added", at=now) for t in new)
            session.commit()
        return len(new)

    def get(self, tenant_id: str) -> Tenant | None:
        validate_tenant_id(tenant_id)
        with Session(self.engine) as session:
            row = session.get(TenantRow, tenant_id)
            return Tenant(row.tenant_id, row.created_at) if row else None

    def list(self) -> list[Tenant]:
        with Session(self.engine) as session:
            rows = session.scalars(select(TenantRow).order_by(TenantRow.tenant_id))
            return [Tenant(r.tenant_id, r.created_at) for r in rows]

    def remove(self, tenant_id: str) -> bool:
        validate_tenant_id(tenant_id)
        with Session(self.engine) as session:
            result = session.execute(delete(TenantRow).where(TenantRow.tenant_id == tenant_id))
            if result.rowcount > 0:
                session.add(TenantChangeRow(tenant_id=tenant_id, change="removed", at=datetime.now(timezone.utc)))
            session.commit()
            return result.rowcount > 0

    def changes_since(self, seq: int, limit: int = 1000) -> list[TenantChange]:
        """Registry changes after watermark ``seq``, oldest first."""
        with Session(self.engine) as session:
            rows = session.scalars(
                select(TenantChangeRow).where(TenantChangeRow.seq > seq).order_by(TenantChangeRow.seq).limit(limit)
            )
            return [TenantChange(r.seq, r.tenant_id, r.change) for r in rows]

    def close(self) -> None:
        self.engine.dispose()
