"""The credit ledger: append-only transactions and a balance per tenant (SQLAlchemy; SQLite
locally, Postgres in prod), plus the meters that GPU and CPU-fallback steps run inside.

Money and time are integers, so accounting is exact: balances and amounts in micro-credits,
usage in resource-milliseconds (milliseconds x GPUs allocated). A price is micro-credits per
resource-minute; a usage transaction costs round(ms x price / 60000).

Concurrency: every change is one transaction that updates the account row with an atomic
``balance = balance + delta`` and appends the transaction with the resulting balance. On
Postgres the row lock serializes writers of one tenant; on SQLite each write transaction starts
with BEGIN IMMEDIATE, so writers queue instead of failing. ``try_spend`` debits only when the
balance covers it, in the same statement, so two concurrent spends can never both use the
last credits.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import BigInteger, Float, Integer, String, create_engine, event, func, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from datacreek_assets.tenancy import validate_tenant_id

MICRO = 1_000_000
RESOURCES = ("gpu", "cpu")
MAX_CREDITS = 1e12  # one amount, balance or price; 1e18 micro-credits still fit a BIGINT


class LedgerError(ValueError):
    pass


class _Base(DeclarativeBase):
    pass


class AccountRow(_Base):
    __tablename__ = "credit_accounts"
    tenant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    balance_micro: Mapped[int] = mapped_column(BigInteger)
    gpu_price_micro: Mapped[int] = mapped_column(BigInteger)  # per GPU-minute
    cpu_price_micro: Mapped[int] = mapped_column(BigInteger)  # per CPU-fallback minute


class TransactionRow(_Base):
    __tablename__ = "credit_transactions"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # topup | usage | price | close
    amount_micro: Mapped[int] = mapped_column(BigInteger)  # signed change of the balance
    balance_after_micro: Mapped[int] = mapped_column(BigInteger)
    resource: Mapped[str | None] = mapped_column(String(8), nullable=True)
    resource_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    price_micro: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    meter_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    note: Mapped[str] = mapped_column(String(200), default="")
    at: Mapped[float] = mapped_column(Float)


class MeterRow(_Base):
    __tablename__ = "meters"
    meter_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    run_id: Mapped[str] = mapped_column(String(64))
    step: Mapped[str] = mapped_column(String(200))
    resource: Mapped[str] = mapped_column(String(8))
    units: Mapped[int] = mapped_column(Integer)
    started_ms: Mapped[int] = mapped_column(BigInteger)
    billed_until_ms: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(12))  # open | closed | orphaned


@dataclass(frozen=True)
class Account:
    tenant_id: str
    balance: float
    gpu_price: float
    cpu_price: float


@dataclass(frozen=True)
class Usage:
    tenant_id: str
    resource: str
    minutes: float
    cost: float


def to_micro(credits: float) -> int:
    value = float(credits)
    if not math.isfinite(value) or abs(value) > MAX_CREDITS:
        raise LedgerError(f"an amount of credits must be a finite number within +-{MAX_CREDITS:g}, not {credits}")
    return round(value * MICRO)


def now_ms() -> int:
    return int(time.time() * 1000)


class QuotaExceeded(RuntimeError):
    """The tenant's credits do not cover (more) GPU work."""


class CreditLedger:
    def __init__(self, url: str, trial_credits: float = 100.0, gpu_price: float = 1.0, cpu_price: float = 0.1):
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(url, connect_args={"timeout": 60, "isolation_level": None})

            @event.listens_for(self.engine, "begin")
            def _immediate(conn):  # take the write lock up front: writers queue, none fails mid-way
                conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            self.engine = create_engine(url)
        _Base.metadata.create_all(self.engine)
        self.trial_micro, self.gpu_price_micro, self.cpu_price_micro = (
            to_micro(trial_credits), to_micro(gpu_price), to_micro(cpu_price))

    # accounts -------------------------------------------------------------------------------

    def _ensure_account(self, session: Session, tenant: str) -> None:
        """Open the account (with its trial credits) unless it exists. INSERT ... ON CONFLICT DO
        NOTHING: two first operations of a new tenant racing both go on, one of them opens it
        (Postgres: the other waits on the row, then sees it; SQLite: BEGIN IMMEDIATE queues them)."""
        if session.get_bind().dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        opened = session.execute(
            insert(AccountRow).values(tenant_id=tenant, balance_micro=self.trial_micro,
                                      gpu_price_micro=self.gpu_price_micro, cpu_price_micro=self.cpu_price_micro)
            .on_conflict_do_nothing(index_elements=[AccountRow.tenant_id]).returning(AccountRow.tenant_id)
        ).scalar_one_or_none()
        if opened is not None:
            session.add(TransactionRow(tenant_id=tenant, kind="topup", amount_micro=self.trial_micro,
                                       balance_after_micro=self.trial_micro, note="trial credits at account opening",
                                       at=time.time()))
            session.flush()

    def account(self, tenant_id: str) -> Account:
        """The tenant's balance and prices. Reading writes nothing: a tenant without an account yet
        reads the terms its account will open with (the trial credits, the default prices)."""
        tenant = validate_tenant_id(tenant_id)
        with Session(self.engine) as session:
            row = session.get(AccountRow, tenant)
            if row is None:
                return Account(tenant, self.trial_micro / MICRO, self.gpu_price_micro / MICRO,
                               self.cpu_price_micro / MICRO)
            return Account(tenant, row.balance_micro / MICRO, row.gpu_price_micro / MICRO, row.cpu_price_micro / MICRO)

    def open_account(self, tenant_id: str) -> None:
        """Open the account with its trial credits unless it is open (the platform does it before a
        tenant's own credentials may bill it)."""
        tenant = validate_tenant_id(tenant_id)
        with Session(self.engine) as session, session.begin():
            self._ensure_account(session, tenant)

    def has_account(self, tenant_id: str) -> bool:
        tenant = validate_tenant_id(tenant_id)
        with Session(self.engine) as session:
            return session.get(AccountRow, tenant) is not None

    def _apply(self, session: Session, tenant: str, delta: int, kind: str, covered: bool = False,
               **fields) -> int | None:
        """Change the balance by ``delta`` and append the transaction, in one statement pair.
        ``covered``: only if the balance stays >= 0 (checked by the UPDATE itself); None when not."""
        self._ensure_account(session, tenant)
        condition = [AccountRow.tenant_id == tenant] + ([AccountRow.balance_micro >= -delta] if covered else [])
        balance = session.execute(
            update(AccountRow).where(*condition)
            .values(balance_micro=AccountRow.balance_micro + delta).returning(AccountRow.balance_micro)
        ).scalar_one_or_none()
        if balance is None:
            return None
        session.add(TransactionRow(tenant_id=tenant, kind=kind, amount_micro=delta, balance_after_micro=balance,
                                   at=time.time(), **fields))
        return balance

    @staticmethod
    def _positive_micro(credits: float, what: str) -> int:
        amount = to_micro(credits)
        if amount <= 0:
            raise LedgerError(f"a {what} must be positive, not {credits}")
        return amount

    def top_up(self, tenant_id: str, credits: float, note: str = "") -> float:
        tenant = validate_tenant_id(tenant_id)
        amount = self._positive_micro(credits, "top-up")
        with Session(self.engine) as session, session.begin():
            return self._apply(session, tenant, amount, "topup", note=note[:200]) / MICRO

    def set_price(self, tenant_id: str, credits_per_minute: float, resource: str = "gpu") -> None:
        tenant = validate_tenant_id(tenant_id)
        if resource not in RESOURCES:
            raise LedgerError(f"resource must be one of {RESOURCES}, not {resource!r}")
        price = to_micro(credits_per_minute)
        if price < 0:
            raise LedgerError(f"a price cannot be negative: {credits_per_minute}")
        column = AccountRow.gpu_price_micro if resource == "gpu" else AccountRow.cpu_price_micro
        with Session(self.engine) as session, session.begin():
            self._ensure_account(session, tenant)
            session.execute(update(AccountRow).where(AccountRow.tenant_id == tenant).values({column: price}))
            self._apply(session, tenant, 0, "price", resource=resource, price_micro=price)

    def close_account(self, tenant_id: str) -> None:
        """Close a removed tenant's account: a final transaction brings the balance to zero (the
        history stays for audit) and the account row goes, so a new tenant with the id starts fresh."""
        tenant = validate_tenant_id(tenant_id)
        with Session(self.engine) as session, session.begin():
            account = session.get(AccountRow, tenant, with_for_update=True)
            if account is None:
                return
            session.add(TransactionRow(tenant_id=tenant, kind="close", amount_micro=-account.balance_micro,
                                       balance_after_micro=0, note="account closed: tenant removed", at=time.time()))
            session.delete(account)

    def try_spend(self, tenant_id: str, credits: float, note: str = "") -> bool:
        """Debit only if the balance covers it (atomically); False when it does not."""
        tenant = validate_tenant_id(tenant_id)
        amount = self._positive_micro(credits, "spend")
        with Session(self.engine) as session, session.begin():
            return self._apply(session, tenant, -amount, "usage", covered=True, note=note[:200]) is not None

    def transactions(self, tenant_id: str) -> list[TransactionRow]:
        tenant = validate_tenant_id(tenant_id)
        with Session(self.engine) as session:
            rows = session.scalars(select(TransactionRow).where(TransactionRow.tenant_id == tenant)
                                   .order_by(TransactionRow.seq)).all()
            session.expunge_all()
            return list(rows)

    def usage(self) -> list[Usage]:
        """Minutes and cost per (tenant, resource), for the exporter."""
        with Session(self.engine) as session:
            rows = session.execute(
                select(TransactionRow.tenant_id, TransactionRow.resource, func.sum(TransactionRow.resource_ms),
                       func.sum(TransactionRow.amount_micro))
                .where(TransactionRow.kind == "usage", TransactionRow.meter_id.is_not(None))
                .group_by(TransactionRow.tenant_id, TransactionRow.resource)).all()
        return [Usage(t, r, int(ms) / 60000, -int(micro) / MICRO) for t, r, ms, micro in rows]

    def balances(self) -> dict[str, float]:
        with Session(self.engine) as session:
            return {t: b / MICRO for t, b in session.execute(select(AccountRow.tenant_id, AccountRow.balance_micro))}

    # meters ---------------------------------------------------------------------------------

    def open_meter(self, tenant_id: str, run_id: str, step: str, resource: str, units: int, at_ms: int) -> str:
        tenant = validate_tenant_id(tenant_id)
        if resource not in RESOURCES or units < 1:
            raise LedgerError(f"bad meter: resource {resource!r}, units {units}")
        meter_id = str(uuid.uuid4())
        with Session(self.engine) as session, session.begin():
            self._ensure_account(session, tenant)
            if session.get(AccountRow, tenant).balance_micro <= 0:
                raise QuotaExceeded(f"tenant {tenant!r} has no credits left for {resource} work: top it up first")
            session.add(MeterRow(meter_id=meter_id, tenant_id=tenant, run_id=run_id, step=step[:200],
                                 resource=resource, units=units, started_ms=at_ms, billed_until_ms=at_ms,
                                 status="open"))
        return meter_id

    def bill_meter(self, meter_id: str, until_ms: int, close: bool = False, status: str = "closed",
                   stale_before_ms: int | None = None) -> float:
        """Bill an open meter from where it was billed until ``until_ms``; returns the balance after.
        With ``stale_before_ms``, only if its last beat is older than that (checked in the transaction)."""
        with Session(self.engine) as session, session.begin():
            meter = session.get(MeterRow, meter_id, with_for_update=True)
            if meter is None or meter.status != "open":
                raise LedgerError(f"meter {meter_id} is not open")
            if stale_before_ms is not None and meter.billed_until_ms >= stale_before_ms:
                return session.get(AccountRow, meter.tenant_id).balance_micro / MICRO  # it beat meanwhile
            ms = max(0, until_ms - meter.billed_until_ms) * meter.units
            account = session.get(AccountRow, meter.tenant_id)
            price = account.gpu_price_micro if meter.resource == "gpu" else account.cpu_price_micro
            balance = self._apply(session, meter.tenant_id, -round(ms * price / 60000), "usage",
                                  resource=meter.resource, resource_ms=ms, price_micro=price, meter_id=meter_id,
                                  note=f"{meter.step} ({meter.run_id[:8]})")
            meter.billed_until_ms = max(meter.billed_until_ms, until_ms)
            if close:
                meter.status = status
            return balance / MICRO

    def meters(self, tenant_id: str | None = None, status: str | None = None) -> list[MeterRow]:
        with Session(self.engine) as session:
            query = select(MeterRow)
            if tenant_id:
                query = query.where(MeterRow.tenant_id == validate_tenant_id(tenant_id))
            if status:
                query = query.where(MeterRow.status == status)
            rows = session.scalars(query).all()
            session.expunge_all()
            return list(rows)

    def meters_by_id(self, meter_id: str) -> MeterRow:
        with Session(self.engine) as session:
            row = session.get(MeterRow, meter_id)
            session.expunge_all()
            return row

    def close_orphans(self, stale_after_ms: int, at_ms: int | None = None) -> list[str]:
        """Close open meters whose process stopped heart-beating: billed until their last beat."""
        at_ms = at_ms if at_ms is not None else now_ms()
        closed = []
        for meter in self.meters(status="open"):
            if at_ms - meter.billed_until_ms > stale_after_ms:
                before = self.meters_by_id(meter.meter_id)
                self.bill_meter(meter.meter_id, meter.billed_until_ms, close=True, status="orphaned",
                                stale_before_ms=at_ms - stale_after_ms)
                if self.meters_by_id(meter.meter_id).status == "orphaned" and before.status == "open":
                    closed.append(meter.meter_id)
        return closed
