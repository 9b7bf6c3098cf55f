"""The cloud's tables. Raw records are append-only; everything else is derived.

Times: the gateway bookkeeping columns are timezone-aware UTC datetimes; a record's
``ts`` and ``received_at`` stay integer epoch milliseconds, the wire's unit, so range
queries and attribution (a later issue) compare integers and bulk inserts stay cheap.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Named constraints so Alembic (and SQLite batch mode) can find them again.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY (a rowid alias), not BIGINT.
BigId = BigInteger().with_variant(Integer, "sqlite")
JsonBody = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; the cloud stores UTC only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Gateway(Base):
    """A gateway allowed to ingest. Its token is stored only as a hash (cloud/auth.py)."""

    __tablename__ = "gateways"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Highest seq ever stored for this gateway (0 before the first record).
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Cloud clock minus gateway clock, ms, at the last batch that allowed an estimate;
    # exact when the gateway sent X-Plantsync-Sent-At, else a heuristic (cloud/ingest.py).
    clock_skew_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    clock_skew_exact: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class StoredRecord(Base):
    """One wire record as received. Append-only (a database trigger refuses UPDATE and
    DELETE); deduplicated on (gateway_id, seq)."""

    __tablename__ = "records"
    __table_args__ = (
        UniqueConstraint("gateway_id", "seq"),
        # gap listing and the explaining `gap` records; later: per-kind scans
        Index("ix_records_gateway_kind_seq", "gateway_id", "kind", "seq"),
        # counters per device and tag in the gateway's order
        Index("ix_records_gateway_device_kind_seq", "gateway_id", "device", "kind", "seq"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    gateway_id: Mapped[str] = mapped_column(String(64), ForeignKey("gateways.id"))
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[int] = mapped_column(BigInteger)
    device: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    body: Mapped[dict[str, Any]] = mapped_column(JsonBody)
    received_at: Mapped[int] = mapped_column(BigInteger)


gateways = Gateway.__table__
records = StoredRecord.__table__


# -- people, their credentials, and the audit trail (cloud core issue) ----------------------

class User(Base):
    """A person: admin (everything, users), planner (acts on orders and stock), viewer (reads).
    Passwords are stored as argon2 hashes only (cloud/auth.py)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    locale: Mapped[str | None] = mapped_column(String(16), nullable=True)   # zh-CN | en
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ApiToken(Base):
    """A script's token acting as a user (``admin create-token USER``). Hash only."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Session(Base):
    """A browser session; ``id`` is the hash of the cookie's secret."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id"))
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LoginAttempt(Base):
    """Every login try, for the per-user and per-address rate limit and the audit."""

    __tablename__ = "login_attempts"
    __table_args__ = (
        Index("ix_login_attempts_name_ts", "name", "ts"),
        Index("ix_login_attempts_address_ts", "address", "ts"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64))
    ts: Mapped[datetime] = mapped_column(UTCDateTime())
    ok: Mapped[bool] = mapped_column(Boolean)


class AuditEntry(Base):
    """Who did what when: every planner action, user and token change, failed login."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_entity_entity_id", "entity", "entity_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(96))        # user name, "gateway:<id>", "system"
    action: Mapped[str] = mapped_column(String(64))       # e.g. work_order.release
    entity: Mapped[str] = mapped_column(String(32))       # e.g. work_order
    entity_id: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JsonBody)


users = User.__table__
api_tokens = ApiToken.__table__
sessions = Session.__table__
login_attempts = LoginAttempt.__table__
audit_log = AuditEntry.__table__
