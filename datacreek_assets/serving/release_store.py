"""What is served: tenants' API keys and model releases (SQLAlchemy; SQLite locally, Postgres in
prod). The router reads keys and routes from here when it starts; the control plane writes here
first and then tells the router, so a restarted router serves what the store says."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import PurePosixPath

from sqlalchemy import BigInteger, DateTime, Float, Integer, String, Text, UniqueConstraint, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from datacreek_assets.serving.model_files import ModelFileError, ModelRef, readable_by
from datacreek_assets.serving.routing import Route, validate_version
from datacreek_assets.sql import open_store
from datacreek_assets.tenancy import validate_tenant_id

KEY_PREFIX = "dck_"
STORE_URL_ENV = "DATACREEK_SERVING_STORE_URL"
LIVE = ("production", "canary")  # then rolled_back or retired


class _Base(DeclarativeBase):
    pass


class ApiKeyRow(_Base):
    __tablename__ = "serving_api_keys"
    key_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(16), unique=True)  # shown to operators; the key is not kept
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReleaseRow(_Base):
    __tablename__ = "serving_releases"
    # live_role is the status while live and NULL after: unique per tenant, so two concurrent
    # writers can never both record a canary (NULLs do not collide, in SQLite and Postgres alike)
    __table_args__ = (UniqueConstraint("tenant_id", "version"), UniqueConstraint("tenant_id", "live_role"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    version: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    live_role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Model files by object-store key and SHA-256 (serving.model_files): replicas fetch and check
    # them. The key columns keep their first names, from when they held local paths; a row of that
    # time has no digest until its next deploy publishes its files (ServingControl.adopt_legacy_files).
    model_key: Mapped[str] = mapped_column("model_path", Text)
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    adapter_key: Mapped[str | None] = mapped_column("adapter_path", Text, nullable=True)
    adapter_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    adapter_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    run_key: Mapped[str | None] = mapped_column(String(128), nullable=True)  # the training it serves; None: a base
    # a canary drill's fault: the latency every request to this version is given (None: none)
    injected_delay_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    canary_weight: Mapped[float] = mapped_column(Float, default=0.0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    numbers: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: the verdict's figures


@dataclass(frozen=True)
class Release:
    tenant_id: str
    version: str
    status: str
    model: ModelRef | None  # None: recorded before releases named files by digest (see legacy_files)
    adapter: ModelRef | None
    canary_weight: float
    started_at: datetime | None
    ended_at: datetime | None
    reason: str | None
    numbers: dict
    run_key: str | None = None
    # a release recorded when releases held local paths: (model path, adapter path), until
    # ServingControl.adopt_legacy_files publishes them and records their keys and digests
    legacy_files: tuple[str, str | None] | None = None
    injected_delay_s: float = 0.0

    @classmethod
    def of(cls, row: ReleaseRow) -> "Release":
        started = row.started_at if row.started_at.tzinfo else row.started_at.replace(tzinfo=timezone.utc)
        numbers = json.loads(row.numbers) if row.numbers else {}
        if not row.model_sha256:  # legacy: the key columns hold local paths
            return cls(row.tenant_id, row.version, row.status, None, None, row.canary_weight, started, row.ended_at,
                       row.reason, numbers, row.run_key or _legacy_run_key(row.adapter_key),
                       (row.model_key, row.adapter_key), row.injected_delay_s or 0.0)
        model = ModelRef(row.model_key, row.model_sha256, row.model_size)
        adapter = (ModelRef(row.adapter_key, row.adapter_sha256, row.adapter_size)
                   if row.adapter_key and row.adapter_sha256 else None)
        return cls(row.tenant_id, row.version, row.status, model, adapter, row.canary_weight,
                   started, row.ended_at, row.reason, numbers, row.run_key, None, row.injected_delay_s or 0.0)


def replica_store_url(given: str) -> str:
    """The release store as Serve's replicas (the router, the base pools) reach it: a cluster's
    Ray pods name it in their environment, with the platform's role, which reads every tenant's
    keys and releases. The URL a release step passes may be its tenant's own role, which sees
    that tenant's rows only. A local head has no such variable: the given URL is the same store."""
    return os.environ.get(STORE_URL_ENV) or given


def route_of(live: dict[str, Release]) -> Route | None:
    """A tenant's route from its live releases ({'production': ..., 'canary': ...})."""
    if "production" not in live:
        return None
    canary = live.get("canary")
    return Route(live["production"].version, canary.version if canary else None,
                 canary.canary_weight if canary else 0.0)


def routes_of(releases: list[Release]) -> dict[str, Route]:
    """Every tenant's route from every tenant's live releases (one read of the store)."""
    live: dict[str, dict[str, Release]] = {}
    for release in releases:
        live.setdefault(release.tenant_id, {})[release.status] = release
    return {tenant: route for tenant in sorted(live) if (route := route_of(live[tenant])) is not None}


def _legacy_run_key(adapter_path: str | None) -> str | None:
    """The training a legacy release serves: its adapter was ``<tenant dir>/gguf/<run key>/adapter.gguf``."""
    if not adapter_path:
        return None
    path = PurePosixPath(adapter_path)
    return path.parent.name if path.parent.parent.name == "gguf" else None


def _refuse_unreadable(tenant_id: str, *refs: ModelRef | None) -> None:
    for ref in refs:
        if ref is not None and not readable_by(ref, tenant_id):
            raise ModelFileError(f"tenant {tenant_id!r} may not be served model file {ref.key!r}")


def _set_files(row: ReleaseRow, model: ModelRef, adapter: ModelRef | None) -> None:
    row.model_key, row.model_sha256, row.model_size = model.key, model.sha256, model.size
    row.adapter_key, row.adapter_sha256, row.adapter_size = (
        (adapter.key, adapter.sha256, adapter.size) if adapter else (None, None, None))


class ReleaseConflict(RuntimeError):
    pass


def _now() -> datetime:
    return datetime.now(timezone.utc)


class ServingStore:
    def __init__(self, url: str):
        self.engine = open_store(url, _Base.metadata)

    # -- API keys ---------------------------------------------------------
    def issue_key(self, tenant_id: str) -> tuple[str, str]:
        """A new API key for the tenant: (key_id, key). Only its SHA-256 is stored."""
        validate_tenant_id(tenant_id)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = secrets.token_hex(6)
        with Session(self.engine) as session:
            session.add(ApiKeyRow(key_sha256=hashlib.sha256(key.encode()).hexdigest(), key_id=key_id,
                                  tenant_id=tenant_id, created_at=_now()))
            session.commit()
        return key_id, key

    def tenant_for_key(self, key: str) -> str | None:
        if not key.startswith(KEY_PREFIX) or len(key) > 128:
            return None
        with Session(self.engine) as session:
            row = session.get(ApiKeyRow, hashlib.sha256(key.encode()).hexdigest())
            return row.tenant_id if row else None

    def revoke_key(self, tenant_id: str, key_id: str) -> bool:
        validate_tenant_id(tenant_id)
        with Session(self.engine) as session:  # scoped: one tenant cannot revoke another's key
            result = session.execute(delete(ApiKeyRow).where(ApiKeyRow.tenant_id == tenant_id,
                                                             ApiKeyRow.key_id == key_id))
            session.commit()
            return result.rowcount > 0

    def keys(self, tenant_id: str) -> list[tuple[str, datetime]]:
        validate_tenant_id(tenant_id)
        with Session(self.engine) as session:
            rows = session.scalars(select(ApiKeyRow).where(ApiKeyRow.tenant_id == tenant_id)
                                   .order_by(ApiKeyRow.created_at))
            return [(r.key_id, r.created_at) for r in rows]

    # -- releases ---------------------------------------------------------
    def releases(self, tenant_id: str) -> list[Release]:
        validate_tenant_id(tenant_id)
        with Session(self.engine) as session:
            rows = session.scalars(select(ReleaseRow).where(ReleaseRow.tenant_id == tenant_id)
                                   .order_by(ReleaseRow.id))
            return [Release.of(r) for r in rows]

    def release(self, tenant_id: str, version: str) -> Release | None:
        for release in self.releases(tenant_id):
            if release.version == validate_version(version):
                return release
        return None

    def live(self, tenant_id: str) -> dict[str, Release]:
        """{'production': ..., 'canary': ...} for the releases serving now."""
        return {r.status: r for r in self.releases(tenant_id) if r.status in LIVE}

    def live_releases(self) -> list[Release]:
        """Every tenant's live releases (what the router routes to and base pools keep loaded)."""
        with Session(self.engine) as session:
            rows = session.scalars(select(ReleaseRow).where(ReleaseRow.status.in_(LIVE)).order_by(ReleaseRow.id))
            return [Release.of(r) for r in rows]

    def set_injected_delay(self, tenant_id: str, version: str, delay_s: float) -> None:
        """Canary drill: every request to this live version waits ``delay_s`` first (0: none)."""
        if not 0.0 <= delay_s <= 60.0:
            raise ValueError(f"an injected delay of {delay_s} s is not within [0, 60]")
        with Session(self.engine) as session, session.begin():
            self._live_row(session, tenant_id, version).injected_delay_s = delay_s or None

    def route(self, tenant_id: str) -> Route | None:
        return route_of(self.live(tenant_id))

    def all_routes(self) -> dict[str, Route]:
        return routes_of(self.live_releases())

    def tenants_with_canary(self) -> list[str]:
        with Session(self.engine) as session:
            return sorted(set(session.scalars(select(ReleaseRow.tenant_id).where(ReleaseRow.status == "canary"))))

    def start(self, tenant_id: str, version: str, status: str, model: ModelRef, adapter: ModelRef | None,
              canary_weight: float = 0.0, run_key: str | None = None) -> Release:
        """Record a new live release; refused while the tenant already has one in that role, or when
        it names a file the tenant may not read (another tenant's adapter)."""
        validate_tenant_id(tenant_id)
        validate_version(version)
        if status not in LIVE:
            raise ValueError(f"a release starts as production or canary, not {status!r}")
        _refuse_unreadable(tenant_id, model, adapter)
        with Session(self.engine) as session, session.begin():
            rows = list(session.scalars(select(ReleaseRow).where(ReleaseRow.tenant_id == tenant_id)))
            if any(r.status == status for r in rows):
                raise ReleaseConflict(f"tenant {tenant_id!r} already has a {status} release")
            if any(r.version == version for r in rows):
                raise ReleaseConflict(f"version {version} of tenant {tenant_id!r} was released before")
            row = ReleaseRow(tenant_id=tenant_id, version=version, status=status, live_role=status, run_key=run_key,
                             canary_weight=canary_weight, started_at=_now())
            _set_files(row, model, adapter)
            session.add(row)
            try:
                session.flush()
            except IntegrityError:  # a concurrent writer recorded the same role or version first
                raise ReleaseConflict(f"tenant {tenant_id!r} already has a {status} release or version {version}") \
                    from None
            return Release.of(row)

    def record_files(self, tenant_id: str, version: str, model: ModelRef, adapter: ModelRef | None,
                     run_key: str | None) -> Release:
        """A legacy release's files, now published: their keys and digests replace its local paths."""
        _refuse_unreadable(tenant_id, model, adapter)
        with Session(self.engine) as session, session.begin():
            row = session.scalars(select(ReleaseRow).where(ReleaseRow.tenant_id == validate_tenant_id(tenant_id),
                                                           ReleaseRow.version == validate_version(version))
                                  .with_for_update()).first()
            if row is None:
                raise ReleaseConflict(f"{tenant_id}-{version} was never released")
            if not row.model_sha256:
                _set_files(row, model, adapter)
                row.run_key = row.run_key or run_key
            return Release.of(row)

    def end(self, tenant_id: str, version: str, status: str, reason: str, numbers: dict | None = None,
            expect: str | None = None) -> Release:
        """A live release stops serving: rolled_back or retired. With `expect`, only while it still
        has that role (a rollback must not end a canary that was promoted meanwhile)."""
        if status not in ("rolled_back", "retired"):
            raise ValueError(f"a release ends as rolled_back or retired, not {status!r}")
        with Session(self.engine) as session, session.begin():
            row = self._live_row(session, tenant_id, version)
            if expect is not None and row.status != expect:
                raise ReleaseConflict(f"{tenant_id}-{version} is {row.status} now, not {expect}")
            row.status, row.live_role, row.canary_weight, row.ended_at = status, None, 0.0, _now()
            row.reason, row.numbers = reason, json.dumps(numbers or {})
            return Release.of(row)

    def promote(self, tenant_id: str, version: str, reason: str, numbers: dict | None = None) -> Release | None:
        """The canary becomes production and the old production is retired, in one transaction.
        Returns the retired release."""
        with Session(self.engine) as session, session.begin():
            canary = self._live_row(session, tenant_id, version)
            if canary.status != "canary":
                raise ReleaseConflict(f"{tenant_id}-{version} is {canary.status}, not the canary")
            old = session.scalars(select(ReleaseRow).where(ReleaseRow.tenant_id == tenant_id,
                                                           ReleaseRow.status == "production")).first()
            if old is not None:
                old.status, old.live_role, old.ended_at, old.reason = "retired", None, _now(), f"replaced by {version}"
                session.flush()  # its role is free before the canary takes it
            canary.status, canary.live_role, canary.canary_weight = "production", "production", 0.0
            canary.reason, canary.numbers = reason, json.dumps(numbers or {})
            return Release.of(old) if old is not None else None

    def _live_row(self, session: Session, tenant_id: str, version: str) -> ReleaseRow:
        validate_tenant_id(tenant_id)
        validate_version(version)
        row = session.scalars(select(ReleaseRow).where(ReleaseRow.tenant_id == tenant_id, ReleaseRow.version == version)
                              .with_for_update()).first()
        if row is None or row.status not in LIVE:
            raise ReleaseConflict(f"{tenant_id}-{version} is not live")
        return row

    def forget_tenant(self, tenant_id: str) -> None:
        """Tenant removal: its keys and release history go (a reused id inherits nothing)."""
        validate_tenant_id(tenant_id)
        with Session(self.engine) as session, session.begin():
            session.execute(delete(ApiKeyRow).where(ApiKeyRow.tenant_id == tenant_id))
            session.execute(delete(ReleaseRow).where(ReleaseRow.tenant_id == tenant_id))

    def close(self) -> None:
        self.engine.dispose()
