"""The database schema (DESIGN §3): typed SQLAlchemy 2 models, the source of truth of every job.

Alembic (migrations/) is the only way this schema reaches a database; a test checks that autogenerate finds
no difference between these models and the migrations. Relationships raise on lazy load so request code
states what it loads.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Job and request statuses (DESIGN §2). `cancelling` is transient: the worker has not yet seen the flag.
QUEUED, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "cancelling",
    "succeeded",
    "failed",
    "cancelled",
)
ACTIVE_STATUSES = (QUEUED, RUNNING, CANCELLING)
FINAL_STATUSES = (SUCCEEDED, FAILED, CANCELLED)
# Audit verdicts written today; the column is a free string (the filter too), so new verdicts need no migration.
VERDICTS = ("forgotten", "not_memorised", "not_reached", "model_damaged", "unverified", "failed", "cancelled")
ADAPTER_STATUSES = ("active", "superseded", "revoked")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(kind: str) -> str:
    """Prefixed random ids (`job_3f…`) so an id pasted in a ticket says what it is."""
    return f"{kind}_{uuid.uuid4().hex}"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite has no timezone, PostgreSQL's timestamptz does).

    Values are stored as naive UTC and come back aware, so comparisons in SQL (lease expiry) and in Python
    agree on both databases.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ten"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A key is shown once; only its visible prefix and an HMAC-SHA256 of the whole key are stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)  # every request looks it up
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


def reference_set_sha256(records: list[Any]) -> str:
    """sha256 of a reference set's canonical JSON (sorted keys, no whitespace, UTF-8): shown instead of the set."""
    canonical = json.dumps(records, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class BaseModel(Base):
    """A registered base model: where its weights are, their fingerprint, and its reference sets.

    `retain` (utility) and `holdout` (never trained on: the "as if never seen" reference of the stopping rule
    and of membership inference) are stored as record dicts. They can be 100k records, so they are deferred:
    only the worker loads them; the API shows their counts and sha256s, kept beside them by
    `_summarise`. `source` is the name relative to its model root (api/model_sources.py). The
    fingerprint is taken by the first worker that loads the weights (the API never imports torch); later jobs
    fail if the weights changed under it.
    """

    __tablename__ = "base_models"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("mdl"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(Text)
    revision: Mapped[str | None] = mapped_column(String(200))
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    default_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    retain: Mapped[list[Any]] = mapped_column(default=list, deferred=True)
    holdout: Mapped[list[Any]] = mapped_column(default=list, deferred=True)
    retain_count: Mapped[int] = mapped_column(Integer, default=0)
    holdout_count: Mapped[int] = mapped_column(Integer, default=0)
    retain_sha256: Mapped[str] = mapped_column(String(64), default=lambda: reference_set_sha256([]))
    holdout_sha256: Mapped[str] = mapped_column(String(64), default=lambda: reference_set_sha256([]))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    @validates("retain", "holdout")
    def _summarise(self, key: str, records: list[Any]) -> list[Any]:
        """Every assignment of a set updates its count and hash, so they can never disagree."""
        setattr(self, f"{key}_count", len(records))
        setattr(self, f"{key}_sha256", reference_set_sha256(records))
        return records


class ForgetRequest(Base):
    """What a caller asked to erase.

    Record text lives only in `payload` (encrypted) until the audit is written; `record_hashes` (salted
    sha256 per record) are what remains afterwards.
    """

    __tablename__ = "forget_requests"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("req"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("base_models.id"), index=True)
    subject_hash: Mapped[str] = mapped_column(String(64), index=True)
    legal_basis: Mapped[str] = mapped_column(String(200))
    ticket: Mapped[str | None] = mapped_column(String(200))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))  # for tracing; dedup is idempotency_keys
    # Deferred: possibly MBs of ciphertext that only the worker reads; loaded on first access.
    payload: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    payload_purged_at: Mapped[datetime | None]
    record_salt: Mapped[str] = mapped_column(String(64))
    record_hashes: Mapped[list[Any]] = mapped_column(default=list)
    record_count: Mapped[int] = mapped_column(Integer)
    probe_count: Mapped[int] = mapped_column(Integer, default=0)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    job_link: Mapped[JobRequest | None] = relationship(back_populates="request", lazy="raise")


class Job(Base):
    """One run of the unlearning pipeline on one model, for one or more requests (DESIGN §2)."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("base_models.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    dispatched_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    phase: Mapped[str | None] = mapped_column(String(32))
    step: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobRequest(Base):
    """Which requests a job serves; a request is served by exactly one job."""

    __tablename__ = "job_requests"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("forget_requests.id"), primary_key=True, unique=True)

    request: Mapped[ForgetRequest] = relationship(back_populates="job_link", lazy="raise")


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(16), default="info")
    type: Mapped[str] = mapped_column(String(16), default="message")
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class AdapterVersion(Base):
    """A published adapter: a plain PEFT LoRA on the unmodified base that forgets every earlier version's
    requests too. `job_id` is unique: a job publishes at most one version, whatever retries happened."""

    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("adp"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("base_models.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("adapter_versions.id"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    rank: Mapped[int] = mapped_column(Integer)
    alpha: Mapped[float]
    target_modules: Mapped[list[Any]] = mapped_column(default=list)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    storage_uri: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="active", index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditRecord(Base):
    """Append-only, hash-chained evidence of what was done for one request; never holds record text.

    `hash = sha256(canonical JSON of the record fields + prev_hash)` (see api/audit.py); `request_id` is
    unique so a request is audited exactly once.
    """

    __tablename__ = "audit_records"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("aud"))
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("forget_requests.id"), unique=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("base_models.id"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    adapter_version_id: Mapped[str | None] = mapped_column(ForeignKey("adapter_versions.id"))
    subject_hash: Mapped[str] = mapped_column(String(64), index=True)
    legal_basis: Mapped[str] = mapped_column(String(200))
    ticket: Mapped[str | None] = mapped_column(String(200))
    record_hashes: Mapped[list[Any]] = mapped_column(default=list)
    model_fingerprint: Mapped[str | None] = mapped_column(String(64))
    adapter_sha256: Mapped[str | None] = mapped_column(String(64))
    verdict: Mapped[str] = mapped_column(String(16), index=True)
    method: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    thresholds: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    requested_at: Mapped[datetime]
    completed_at: Mapped[datetime]
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The signed head of the audit chain (api/chain_head.py): the newest record's seq and hash, signed with
    the audit key at every append, in the same transaction. Kept apart from `audit_records`, so deleting the
    newest records leaves a head that names records which are gone. One row (`id` 1); `signature` is null
    only for a chain that predates the head, until the service signs it at start."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime | None]
    key_id: Mapped[str | None] = mapped_column(String(16))
    signature: Mapped[str | None] = mapped_column(String(128))


class IdempotencyKey(Base):
    """One `Idempotency-Key` of a tenant (IETF draft "The Idempotency-Key HTTP Header Field").

    `fingerprint` is an HMAC of method, path and body (never the body: it holds the personal data to
    erase); once the first request completed, its status, headers and body are replayed to every retry
    until `expires_at`. `locked_until` bounds how long an in-flight reservation blocks retries if the
    process died mid-request.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="in_flight")
    status_code: Mapped[int | None] = mapped_column(Integer)
    response_headers: Mapped[dict[str, Any]] = mapped_column(default=dict)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    locked_until: Mapped[datetime | None]
    expires_at: Mapped[datetime] = mapped_column(index=True)
