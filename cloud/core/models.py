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
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    false,
    true,
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
        stamp: datetime = value
        return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _table(model: type[Base]) -> Table:
    """A model's ``Table``, for Core queries (``records.c.seq``); typed as the Table it is
    (SQLAlchemy declares ``__table__`` as the wider ``FromClause``)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


class Gateway(Base):
    """A gateway allowed to ingest. Its token is stored only as a hash (cloud/auth/credentials.py)."""

    __tablename__ = "gateways"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Highest seq ever stored for this gateway (0 before the first record).
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Cloud clock minus gateway clock, ms, at the last batch that allowed an estimate;
    # exact when the gateway sent X-Plantsync-Sent-At, else a heuristic (cloud/ingest/store.py).
    clock_skew_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    clock_skew_exact: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # Records still queued at the gateway behind its last batch (from the batch's optional
    # ``backlog``), and when that batch arrived: reports are provisional while a backlog
    # is still arriving.
    backlog: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    backlog_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The numbering (buffer incarnation) the gateway's records are stored under, from the
    # batches' optional ``incarnation``; a batch of another numbering is refused unless it
    # starts above last_seq (cloud/ingest/store.py). None: never told.
    incarnation: Mapped[str | None] = mapped_column(String(64), nullable=True)


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


class IngestDeadLetter(Base):
    """A batch the MQTT consumer could not store after its retries (an applier raised on
    it): parked here with its payload so the consumer goes on with every other gateway
    (cloud/ingest/mqtt.py). One row per (gateway, first_seq, last_seq): the gateway sends
    the unconfirmed batch again, which counts another attempt on the same row."""

    __tablename__ = "ingest_dead_letters"
    __table_args__ = (UniqueConstraint("gateway_id", "first_seq", "last_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    gateway_id: Mapped[str] = mapped_column(String(64))
    first_seq: Mapped[int] = mapped_column(BigInteger)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    records: Mapped[int] = mapped_column(Integer)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    error: Mapped[str] = mapped_column(String(1000))
    attempts: Mapped[int] = mapped_column(Integer)
    first_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_at: Mapped[datetime] = mapped_column(UTCDateTime())


gateways = _table(Gateway)
records = _table(StoredRecord)
ingest_dead_letters = _table(IngestDeadLetter)


# -- people, their credentials, and the audit trail (cloud core issue) ----------------------

class User(Base):
    """A person: admin (everything, users), planner (acts on orders and stock), viewer (reads).
    Passwords are stored as argon2 hashes only (cloud/auth/credentials.py)."""

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


users = _table(User)
api_tokens = _table(ApiToken)
sessions = _table(Session)
login_attempts = _table(LoginAttempt)
audit_log = _table(AuditEntry)


# -- master data and work orders (cloud core issue) ----------------------------------------
#
# Quantities of materials are exact decimals stored as integers in micro-units: a column
# named ``*_u`` holds value x 1,000,000 (``2.5 kg`` -> ``2_500_000``). SQLite has no exact
# decimal type, and the stock ledger must equal the sum of its moves exactly on both
# backends; integer arithmetic makes that true. Pieces of product (work order quantity,
# good, scrap) are plain integers. Scrap factors are float fractions (0.02 = 2 %); they
# only ever feed a rounding step that produces ``*_u`` integers.

WORK_ORDER_STATUSES = ("draft", "released", "in_progress", "completed", "closed", "cancelled")
OPERATION_STATUSES = ("pending", "in_progress", "completed", "on_hold")
COMPLETION_MODES = ("auto", "confirm")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Machine(Base):
    """A machine: one device of one gateway, with a display name and work center."""

    __tablename__ = "machines"
    __table_args__ = (
        UniqueConstraint("gateway_id", "device"),
        Index("ix_machines_work_center", "work_center"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    gateway_id: Mapped[str] = mapped_column(String(64), ForeignKey("gateways.id"))
    device: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(128))
    work_center: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Product(Base):
    """Something the plant makes; counted in pieces on the machines."""

    __tablename__ = "products"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    unit: Mapped[str] = mapped_column(String(16), default="pcs", server_default="pcs")


class Material(Base):
    """A raw material or component (物料). ``safety_stock_manual_u`` overrides the computed
    safety stock when set (micro-units of ``unit``)."""

    __tablename__ = "materials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    unit: Mapped[str] = mapped_column(String(16))
    lead_time_days: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    safety_stock_manual_u: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Bom(Base):
    """One version of a product's bill of materials. The current version is the highest;
    a work order copies it at release (wo_components), so later versions never change
    an order already running."""

    __tablename__ = "boms"
    __table_args__ = (UniqueConstraint("product_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    product_id: Mapped[int] = mapped_column(Integer, ForeignKey("products.id"))
    version: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(UTCDateTime())


class BomLine(Base):
    """A component per unit of product. ``scrap_factor``: extra fraction consumed
    (0.02 = 2 %); ``backflush_scrap``: scrap counts consume this component too;
    ``step``: the routing step that consumes it (None = the last operation)."""

    __tablename__ = "bom_lines"
    __table_args__ = (Index("ix_bom_lines_bom_id", "bom_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bom_id: Mapped[int] = mapped_column(Integer, ForeignKey("boms.id"))
    material_id: Mapped[int] = mapped_column(Integer, ForeignKey("materials.id"))
    qty_per_unit_u: Mapped[int] = mapped_column(BigInteger)
    scrap_factor: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    backflush_scrap: Mapped[bool] = mapped_column(Boolean, default=False,
                                                  server_default=false())
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Routing(Base):
    """One version of a product's routing (工艺路线); the current version is the highest."""

    __tablename__ = "routings"
    __table_args__ = (UniqueConstraint("product_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    product_id: Mapped[int] = mapped_column(Integer, ForeignKey("products.id"))
    version: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(UTCDateTime())


class RoutingOp(Base):
    """An operation (工序) of a routing, in ``step`` order, on a machine or a work center."""

    __tablename__ = "routing_ops"
    __table_args__ = (UniqueConstraint("routing_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    routing_id: Mapped[int] = mapped_column(Integer, ForeignKey("routings.id"))
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(128))
    machine_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("machines.id"),
                                                   nullable=True)
    work_center: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ideal_cycle_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cavities: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class WorkOrder(Base):
    """An order to make ``quantity`` pieces of a product (生产工单). States:
    draft -> released -> in_progress -> completed -> closed; cancelled from draft/released
    (cloud/production/status.py holds every transition). ``bom_version``/``routing_version``
    are the versions copied at release. ``priority``: higher runs first."""

    __tablename__ = "work_orders"
    __table_args__ = (
        CheckConstraint(_in("status", WORK_ORDER_STATUSES), name="status"),
        CheckConstraint(_in("completion_mode", COMPLETION_MODES), name="completion_mode"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
        Index("ix_work_orders_status_due", "status", "due"),
        Index("ix_work_orders_due", "due"),
        Index("ix_work_orders_customer", "customer"),
        Index("ix_work_orders_product_id", "product_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    number: Mapped[str] = mapped_column(String(64), unique=True)
    product_id: Mapped[int] = mapped_column(Integer, ForeignKey("products.id"))
    quantity: Mapped[int] = mapped_column(BigInteger)
    due: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    customer: Mapped[str | None] = mapped_column(String(128), nullable=True)
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    status: Mapped[str] = mapped_column(String(16), default="draft", server_default="draft")
    completion_mode: Mapped[str] = mapped_column(String(8), default="auto",
                                                 server_default="auto")
    bom_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    routing_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    updated: Mapped[datetime] = mapped_column(UTCDateTime())
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # "system" when completed by the counts (auto mode; re-attribution may reopen it),
    # else the planner who completed it (sticky: counts never reopen it).
    completed_by: Mapped[str | None] = mapped_column(String(96), nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class WoOperation(Base):
    """A work order's operation, copied from the routing at release, with its progress.
    ``good``/``scrap`` are pieces attributed to it (attribution keeps them; status rules
    in cloud/production/status.py ``on_operation_progress``)."""

    __tablename__ = "wo_operations"
    __table_args__ = (
        UniqueConstraint("work_order_id", "step"),
        CheckConstraint(_in("status", OPERATION_STATUSES), name="status"),
        Index("ix_wo_operations_machine_id_status", "machine_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    work_order_id: Mapped[int] = mapped_column(Integer, ForeignKey("work_orders.id"))
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(128))
    machine_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("machines.id"),
                                                   nullable=True)
    work_center: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ideal_cycle_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cavities: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    status: Mapped[str] = mapped_column(String(16), default="pending",
                                        server_default="pending")
    good: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    scrap: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # "system" (auto completion, may reopen) or the planner who confirmed it (sticky).
    completed_by: Mapped[str | None] = mapped_column(String(96), nullable=True)


class WoComponent(Base):
    """A work order's component, copied from the BOM at release: what backflush consumes
    per counted piece (``qty_per_unit_u`` x (1 + ``scrap_factor``); scrap pieces too when
    ``backflush_scrap``), at operation ``step`` (None = the last operation)."""

    __tablename__ = "wo_components"
    __table_args__ = (
        Index("ix_wo_components_work_order_id", "work_order_id"),
        Index("ix_wo_components_material_id", "material_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    work_order_id: Mapped[int] = mapped_column(Integer, ForeignKey("work_orders.id"))
    material_id: Mapped[int] = mapped_column(Integer, ForeignKey("materials.id"))
    qty_per_unit_u: Mapped[int] = mapped_column(BigInteger)
    scrap_factor: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    backflush_scrap: Mapped[bool] = mapped_column(Boolean, default=False,
                                                  server_default=false())
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)


machines = _table(Machine)
products = _table(Product)
materials = _table(Material)
boms = _table(Bom)
bom_lines = _table(BomLine)
routings = _table(Routing)
routing_ops = _table(RoutingOp)
work_orders = _table(WorkOrder)
wo_operations = _table(WoOperation)
wo_components = _table(WoComponent)


# -- dispatch, attribution, stock ledger (cloud core issue: attribution and inventory) -----
#
# Times of dispatches, attributions and stock moves are integer epoch milliseconds, the
# record's unit, so attribution compares integers. A dispatch covers [start_ts, end_ts);
# end_ts NULL = still running.

STOCK_MOVE_KINDS = ("receipt", "issue", "backflush", "scrap", "adjustment", "count")


class Dispatch(Base):
    """Operation ``wo_operation_id`` ran on ``machine_id`` during [start_ts, end_ts).
    Dispatches of one machine never overlap (cloud/production/dispatch.py refuses it)."""

    __tablename__ = "dispatches"
    __table_args__ = (
        Index("ix_dispatches_machine_id_start_ts", "machine_id", "start_ts"),
        Index("ix_dispatches_wo_operation_id", "wo_operation_id"),
        CheckConstraint("end_ts IS NULL OR end_ts > start_ts", name="interval"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    machine_id: Mapped[int] = mapped_column(Integer, ForeignKey("machines.id"))
    wo_operation_id: Mapped[int] = mapped_column(Integer, ForeignKey("wo_operations.id"))
    start_ts: Mapped[int] = mapped_column(BigInteger)
    end_ts: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(96))
    edited: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    edited_by: Mapped[str | None] = mapped_column(String(96), nullable=True)


class Attribution(Base):
    """One count record and where its pieces went. ``good``/``scrap`` are the record's
    contribution (fixed when it is first applied; cloud/production/attribution.py says how counters
    combine); ``wo_operation_id`` NULL = unassigned production, kept and assignable;
    ``machine_id`` NULL = a device no machine is registered for (yet)."""

    __tablename__ = "attributions"
    __table_args__ = (
        Index("ix_attributions_machine_id_ts", "machine_id", "ts"),
        Index("ix_attributions_wo_operation_id", "wo_operation_id"),
        Index("ix_attributions_gateway_id_device_ts", "gateway_id", "device", "ts"),
    )

    gateway_id: Mapped[str] = mapped_column(String(64), ForeignKey("gateways.id"),
                                            primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    device: Mapped[str] = mapped_column(String(128))
    machine_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("machines.id"),
                                                   nullable=True)
    ts: Mapped[int] = mapped_column(BigInteger)
    counts: Mapped[str] = mapped_column(String(8))
    delta: Mapped[int] = mapped_column(BigInteger)
    good: Mapped[int] = mapped_column(BigInteger)
    scrap: Mapped[int] = mapped_column(BigInteger)
    dispatch_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("dispatches.id"),
                                                    nullable=True)
    wo_operation_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("wo_operations.id"),
                                                        nullable=True)


class StockMove(Base):
    """One line of the stock ledger (micro-units, signed: + in, - out). References: the
    work order, the count record (gateway_id, seq) a backflush came from, the user.
    ``ts`` is when the move happened (epoch ms; a backflush has its record's ts)."""

    __tablename__ = "stock_moves"
    __table_args__ = (
        CheckConstraint(_in("kind", STOCK_MOVE_KINDS), name="kind"),
        # one backflush per record and material: it can never run twice
        UniqueConstraint("gateway_id", "seq", "material_id"),
        Index("ix_stock_moves_material_id_ts", "material_id", "ts"),
        Index("ix_stock_moves_work_order_id", "work_order_id"),
        Index("ix_stock_moves_kind_ts", "kind", "ts"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    material_id: Mapped[int] = mapped_column(Integer, ForeignKey("materials.id"))
    qty_u: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    ts: Mapped[int] = mapped_column(BigInteger)
    work_order_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("work_orders.id"),
                                                      nullable=True)
    gateway_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    user: Mapped[str | None] = mapped_column(String(96), nullable=True)
    note: Mapped[str | None] = mapped_column(String(255), nullable=True)


class StockBalance(Base):
    """A material's on-hand quantity: always the sum of its stock_moves (maintained in
    the same transaction as every move)."""

    __tablename__ = "stock_balances"

    material_id: Mapped[int] = mapped_column(Integer, ForeignKey("materials.id"),
                                             primary_key=True)
    qty_u: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


dispatches = _table(Dispatch)
attributions = _table(Attribution)
stock_moves = _table(StockMove)
stock_balances = _table(StockBalance)


# -- machine timeline, anomalies, notifications, OEE, maintenance (anomalies/OEE issue) -----
#
# Times are epoch ms (the record's clock) unless the column is a UTCDateTime (the cloud's
# clock: when a person or the cloud did something).

MACHINE_EVENT_KINDS = ("state", "link")
ANOMALY_KINDS = ("alarm", "limit", "offline", "stop", "scrap_rate", "stock_low", "maintenance",
                 "material", "operator", "quality")
MANUAL_ANOMALY_KINDS = ("material", "operator", "quality")
ANOMALY_STATUSES = ("open", "acknowledged", "resolved", "closed")
SEVERITIES = ("info", "minor", "major", "critical")
CHANNEL_KINDS = ("webhook", "dingtalk", "wecom", "email")
NOTIFICATION_STATUSES = ("pending", "sent", "dead")
MAINTENANCE_METRICS = ("run_hours", "cycles")


class MachineEvent(Base):
    """A device's state or link change, copied from its ``state``/``link`` record at ingest:
    the timeline that stops, downtime, OEE, offline anomalies and run hours are computed
    from. Keyed by the record, so a replay adds nothing; a late record simply lands at its
    own ``ts`` and every report computed from the timeline follows. Machines are found by
    (gateway_id, device) at query time, so a device registered later keeps its history."""

    __tablename__ = "machine_events"
    __table_args__ = (
        CheckConstraint(_in("kind", MACHINE_EVENT_KINDS), name="kind"),
        Index("ix_machine_events_gateway_id_device_ts", "gateway_id", "device", "ts"),
    )

    gateway_id: Mapped[str] = mapped_column(String(64), ForeignKey("gateways.id"),
                                            primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    device: Mapped[str] = mapped_column(String(128))
    ts: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(8))
    state: Mapped[str | None] = mapped_column(String(32), nullable=True)    # kind state
    code: Mapped[int | None] = mapped_column(BigInteger, nullable=True)      # kind state
    online: Mapped[bool | None] = mapped_column(Boolean, nullable=True)      # kind link
    error: Mapped[str | None] = mapped_column(String(255), nullable=True)    # kind link


class Anomaly(Base):
    """Something wrong on the floor (异常): raised from records, by the cloud's sweep or by
    a person. ``ts`` is the anomaly's own time (the record's), ``cleared_ts`` when its
    condition ended (alarm cleared, machine back online). ``source_key`` makes raising
    idempotent (e.g. ``alarm:<gateway>:<seq>``). Lifecycle open -> acknowledged ->
    resolved -> closed, every step with who and when (cloud/anomalies/lifecycle.py)."""

    __tablename__ = "anomalies"
    __table_args__ = (
        CheckConstraint(_in("kind", ANOMALY_KINDS), name="kind"),
        CheckConstraint(_in("status", ANOMALY_STATUSES), name="status"),
        CheckConstraint(_in("severity", SEVERITIES), name="severity"),
        Index("ix_anomalies_status_ts", "status", "ts"),
        Index("ix_anomalies_machine_id_code_ts", "machine_id", "code", "ts"),
        Index("ix_anomalies_kind_ts", "kind", "ts"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    severity: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), default="open", server_default="open")
    title: Mapped[str] = mapped_column(String(255))
    detail: Mapped[dict[str, Any]] = mapped_column(JsonBody)
    machine_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("machines.id"),
                                                   nullable=True)
    material_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("materials.id"),
                                                    nullable=True)
    gateway_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    device: Mapped[str | None] = mapped_column(String(128), nullable=True)
    ts: Mapped[int] = mapped_column(BigInteger)
    cleared_ts: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    source_key: Mapped[str | None] = mapped_column(String(160), unique=True, nullable=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(96))
    assignee: Mapped[str | None] = mapped_column(String(96), nullable=True)
    cause: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    action: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    acknowledged_by: Mapped[str | None] = mapped_column(String(96), nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(String(96), nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    closed_by: Mapped[str | None] = mapped_column(String(96), nullable=True)
    escalation_level: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    escalated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # the earlier anomaly of the same machine and code within the repeat window
    repeat_of: Mapped[int | None] = mapped_column(Integer, ForeignKey("anomalies.id"),
                                                  nullable=True)
    # operations this anomaly put on hold (a severe quality anomaly), so resolving can say so
    held_operations: Mapped[list[int] | None] = mapped_column(JsonBody, nullable=True)
    # the title as a message code with parameters (cloud/core/anomaly_text.py), rendered in
    # the reader's language; ``title`` stays the English rendering (rows from before: only it)
    title_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    title_params: Mapped[dict[str, Any] | None] = mapped_column(JsonBody, nullable=True)
    # repeats of the same alarm or limit folded into this anomaly (fold_window_s): how many
    # times it happened in all, and when it last began (record time; NULL: only at ``ts``)
    occurrences: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    last_seen_ts: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class LimitExcursion(Base):
    """A limit excursion still going on (a ``limit`` record with ``active`` true whose clearing
    record has not arrived), keyed by that record. It becomes an anomaly only once it has
    lasted ``limit_min_duration_s`` (``anomaly_id``); the row is deleted when it clears
    (cloud/anomalies/limits.py)."""

    __tablename__ = "limit_excursions"
    __table_args__ = (
        Index("ix_limit_excursions_gateway_id_device_tag", "gateway_id", "device", "tag"),
    )

    gateway_id: Mapped[str] = mapped_column(String(64), ForeignKey("gateways.id"),
                                            primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    device: Mapped[str] = mapped_column(String(128))
    tag: Mapped[str] = mapped_column(String(64))
    start_ts: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[float] = mapped_column(Float)
    lo: Mapped[float | None] = mapped_column(Float, nullable=True)
    hi: Mapped[float | None] = mapped_column(Float, nullable=True)
    anomaly_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("anomalies.id"),
                                                   nullable=True)


class AnomalyLink(Base):
    """An order an anomaly hits: the operation dispatched on its machine at its ``ts``, or,
    for a material shortage, an open order whose components use the material
    (``wo_operation_id`` NULL). ``customer`` is copied for the report."""

    __tablename__ = "anomaly_links"
    __table_args__ = (
        Index("ix_anomaly_links_anomaly_id", "anomaly_id"),
        Index("ix_anomaly_links_work_order_id", "work_order_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    anomaly_id: Mapped[int] = mapped_column(Integer, ForeignKey("anomalies.id"))
    work_order_id: Mapped[int] = mapped_column(Integer, ForeignKey("work_orders.id"))
    wo_operation_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("wo_operations.id"),
                                                        nullable=True)
    customer: Mapped[str | None] = mapped_column(String(128), nullable=True)


class CloudSetting(Base):
    """A cloud-wide setting as JSON under a key (anomaly thresholds and severity rules,
    escalation, OEE thresholds); defaults live in code, a row overrides them."""

    __tablename__ = "cloud_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JsonBody)
    updated: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_by: Mapped[str] = mapped_column(String(96))


class NotificationChannel(Base):
    """Where anomaly messages go: a generic JSON webhook, a DingTalk or WeCom robot URL,
    or email addresses (``target``). ``secret``: DingTalk's signing secret (it must be
    readable to sign, so it is stored as given and never shown back by the API)."""

    __tablename__ = "notification_channels"
    __table_args__ = (
        CheckConstraint(_in("kind", CHANNEL_KINDS), name="kind"),
        CheckConstraint(_in("min_severity", SEVERITIES), name="min_severity"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(1000))
    secret: Mapped[str | None] = mapped_column(String(255), nullable=True)
    min_severity: Mapped[str] = mapped_column(String(8), default="minor", server_default="minor")
    kinds: Mapped[list[str] | None] = mapped_column(JsonBody, nullable=True)   # None = all
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created: Mapped[datetime] = mapped_column(UTCDateTime())


class Notification(Base):
    """One message to one channel (the outbox). Anomalies of one group (same machine and
    code, within the grouping window) join a pending message instead of sending another.
    ``status``: pending (retried with backoff until ``next_attempt``), sent, or dead (the
    dead-letter list, after the last retry; can be retried by hand)."""

    __tablename__ = "notifications"
    __table_args__ = (
        CheckConstraint(_in("status", NOTIFICATION_STATUSES), name="status"),
        Index("ix_notifications_status_next_attempt", "status", "next_attempt"),
        Index("ix_notifications_channel_id_group_key", "channel_id", "group_key"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    channel_id: Mapped[int] = mapped_column(Integer, ForeignKey("notification_channels.id"))
    group_key: Mapped[str] = mapped_column(String(255))
    event: Mapped[str] = mapped_column(String(32))        # opened | escalated | ...
    anomaly_ids: Mapped[list[int]] = mapped_column(JsonBody)
    suppressed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    status: Mapped[str] = mapped_column(String(8), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt: Mapped[datetime] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ShiftCalendar(Base):
    """Working time (班次日历): ``definition`` holds shifts (name, start, end, weekdays,
    breaks) and non-working dates, in ``timezone`` (cloud/oee/calendars.py validates it)."""

    __tablename__ = "shift_calendars"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    timezone: Mapped[str] = mapped_column(String(64))
    definition: Mapped[dict[str, Any]] = mapped_column(JsonBody)
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    updated: Mapped[datetime] = mapped_column(UTCDateTime())


class MachineCalendar(Base):
    """Which calendar a machine works to (none: the calendar named ``default``, else
    around the clock)."""

    __tablename__ = "machine_calendars"

    machine_id: Mapped[int] = mapped_column(Integer, ForeignKey("machines.id"), primary_key=True)
    calendar_id: Mapped[int] = mapped_column(Integer, ForeignKey("shift_calendars.id"))


class StopReason(Base):
    """The reason a person gave a stop afterwards; a stop is keyed by its machine and the
    ts it started (the timeline's event), so the reason survives recomputation."""

    __tablename__ = "stop_reasons"

    machine_id: Mapped[int] = mapped_column(Integer, ForeignKey("machines.id"), primary_key=True)
    start_ts: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    reason: Mapped[str] = mapped_column(String(128))
    note: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    set_by: Mapped[str] = mapped_column(String(96))
    set_at: Mapped[datetime] = mapped_column(UTCDateTime())


class MaintenanceCounter(Base):
    """A maintenance interval on a machine: run hours or cycles since ``since_ts`` against
    ``threshold`` (run_hours: milliseconds of run time; cycles: machine cycles). Reaching
    it raises a maintenance-due anomaly (``due_anomaly_id``); a reset (audited) starts
    counting again from the reset time."""

    __tablename__ = "maintenance_counters"
    __table_args__ = (
        UniqueConstraint("machine_id", "name"),
        CheckConstraint(_in("metric", MAINTENANCE_METRICS), name="metric"),
        CheckConstraint("threshold > 0", name="threshold_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    machine_id: Mapped[int] = mapped_column(Integer, ForeignKey("machines.id"))
    name: Mapped[str] = mapped_column(String(128))
    metric: Mapped[str] = mapped_column(String(16))
    threshold: Mapped[int] = mapped_column(BigInteger)
    since_ts: Mapped[int] = mapped_column(BigInteger)
    due_anomaly_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("anomalies.id"),
                                                       nullable=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    last_reset_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_reset_by: Mapped[str | None] = mapped_column(String(96), nullable=True)


machine_events = _table(MachineEvent)
anomalies = _table(Anomaly)
limit_excursions = _table(LimitExcursion)
anomaly_links = _table(AnomalyLink)
cloud_settings = _table(CloudSetting)
notification_channels = _table(NotificationChannel)
notifications = _table(Notification)
shift_calendars = _table(ShiftCalendar)
machine_calendars = _table(MachineCalendar)
stop_reasons = _table(StopReason)
maintenance_counters = _table(MaintenanceCounter)
