"""The audit log: an append-only hash chain (DESIGN §3).

Each record's `hash = sha256(canonical JSON of its fields ‖ prev_hash)`, where prev_hash is the hash of the
record with the previous `seq` (64 zeros for the first). Editing any stored field, deleting or reordering a
row breaks every later hash, which `verify_chain` finds.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from api.models import AuditRecord, new_id

GENESIS_HASH = "0" * 64
# Every stored column but `hash` itself enters the hash.
CHAINED_FIELDS = (
    "id",
    "seq",
    "tenant_id",
    "request_id",
    "model_id",
    "job_id",
    "adapter_version_id",
    "subject_hash",
    "legal_basis",
    "ticket",
    "record_hashes",
    "model_fingerprint",
    "adapter_sha256",
    "verdict",
    "method",
    "config",
    "metrics",
    "thresholds",
    "error",
    "requested_at",
    "completed_at",
    "prev_hash",
)


def json_safe(value: Any) -> Any:
    """Non-finite floats become null: JSON (and PostgreSQL) has no NaN, and the chain must round-trip."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _canonical_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(timespec="microseconds")
    return value


def canonical_json(record: AuditRecord) -> bytes:
    fields = {name: _canonical_value(getattr(record, name)) for name in CHAINED_FIELDS}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def compute_hash(record: AuditRecord) -> str:
    return hashlib.sha256(canonical_json(record) + record.prev_hash.encode()).hexdigest()


def _lock_chain(session: Session) -> None:
    """Serialise appends. SQLite transactions here already hold the write lock (BEGIN IMMEDIATE); PostgreSQL
    takes a transaction-scoped advisory lock so concurrent publishers never compute the same seq."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(4242001)"))


def append(session: Session, record: AuditRecord) -> AuditRecord:
    """Give `record` the next seq, link it to the chain's head and seal it; caller commits."""
    _lock_chain(session)
    head = session.execute(select(AuditRecord.seq, AuditRecord.hash).order_by(AuditRecord.seq.desc()).limit(1)).first()
    record.seq = (head.seq + 1) if head else 1
    record.prev_hash = head.hash if head else GENESIS_HASH
    # Column defaults apply only at INSERT, after the hash: fill every hashed field now.
    record.id = record.id or new_id("aud")
    record.record_hashes = list(record.record_hashes or [])
    record.metrics = json_safe(record.metrics or {})
    record.thresholds = json_safe(record.thresholds or {})
    record.config = json_safe(record.config or {})
    record.hash = compute_hash(record)
    session.add(record)
    session.flush()
    return record


def verify_chain(session: Session, batch: int = 500) -> dict[str, Any]:
    """Recompute every hash in seq order; report the first seq whose link or content does not match."""
    checked, prev_hash, expected_seq = 0, GENESIS_HASH, 1
    total = session.scalar(select(func.count()).select_from(AuditRecord)) or 0
    last_seq = 0
    while True:
        rows = session.scalars(
            select(AuditRecord).where(AuditRecord.seq > last_seq).order_by(AuditRecord.seq).limit(batch)
        ).all()
        if not rows:
            break
        for row in rows:
            if row.seq != expected_seq:
                return _result(False, checked, total, expected_seq, "missing record")
            if row.prev_hash != prev_hash:
                return _result(False, checked, total, row.seq, "prev_hash does not link to the previous record")
            if compute_hash(row) != row.hash:
                return _result(False, checked, total, row.seq, "hash does not match the record's content")
            prev_hash, expected_seq, last_seq = row.hash, row.seq + 1, row.seq
            checked += 1
        session.expunge_all()
    return {
        "ok": True,
        "checked": checked,
        "total": total,
        "first_broken_seq": None,
        "reason": None,
        "head_hash": prev_hash,
    }


def _result(ok: bool, checked: int, total: int, seq: int, reason: str) -> dict[str, Any]:
    return {
        "ok": ok,
        "checked": checked,
        "total": total,
        "first_broken_seq": seq,
        "reason": reason,
        "head_hash": None,
    }
