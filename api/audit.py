"""The audit log: an append-only hash chain (DESIGN §3).

Each record's `hash = sha256(canonical JSON of its fields ‖ prev_hash)`, where prev_hash is the hash of the
record with the previous `seq` (64 zeros for the first). Editing any stored field, deleting or reordering a
row breaks every later hash, which `verify_chain` finds; deleting the newest rows is found by the signed
head every append writes (api/chain_head.py).
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from unlearnd.api import chain_head
from unlearnd.api.certificates import CertificateError
from unlearnd.api.models import AuditRecord, new_id

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


def _lock_chain(session: Session, *, shared: bool = False) -> None:
    """Serialise appends. SQLite transactions here already hold the write lock (BEGIN IMMEDIATE); PostgreSQL
    takes a transaction-scoped advisory lock so concurrent publishers never compute the same seq. Verify
    takes it shared: under READ COMMITTED an append committing between reading the records and the head
    would otherwise look like a missing record (SQLite's read transaction is one snapshot already)."""
    if session.get_bind().dialect.name == "postgresql":
        lock = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        session.execute(text(f"SELECT {lock}(4242001)"))


def append(session: Session, record: AuditRecord) -> AuditRecord:
    """Give `record` the next seq, link it to the chain's head, seal it and sign the new head; caller commits."""
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
    chain_head.advance(session, record.seq, record.hash)
    return record


def verify_chain(
    session: Session,
    public_key: Ed25519PublicKey | None = None,
    saved_head: tuple[int, str] | None = None,
    batch: int = 500,
) -> dict[str, Any]:
    """Recompute every hash in seq order, then check that the chain ends exactly at its signed head (signed by
    `public_key`'s key, default the session's) and, if given, contains a head the caller saved earlier
    (`saved_head` = its seq and hash).

    The first problem is reported: `first_broken_seq`, a `reason`, and `missing_from_seq`/`missing_to_seq`
    when records are gone (a gap, a truncated end, or a rollback behind a saved head)."""
    public_key = public_key or chain_head.signing_key(session).public_key()
    _lock_chain(session, shared=True)
    checked, prev_hash, expected_seq = 0, GENESIS_HASH, 1
    total = session.scalar(select(func.count()).select_from(AuditRecord)) or 0
    saved_seq, saved_hash = saved_head if saved_head is not None else (None, None)
    hash_at_saved = GENESIS_HASH if saved_seq == 0 else None
    last_seq = 0
    while True:
        rows = session.scalars(
            select(AuditRecord).where(AuditRecord.seq > last_seq).order_by(AuditRecord.seq).limit(batch)
        ).all()
        if not rows:
            break
        for row in rows:
            if row.seq != expected_seq:
                missing = (expected_seq, row.seq - 1)
                return _broken(checked, total, expected_seq, _missing_reason(*missing, "from the chain"), missing)
            if row.prev_hash != prev_hash:
                return _broken(checked, total, row.seq, "prev_hash does not link to the previous record")
            if compute_hash(row) != row.hash:
                return _broken(checked, total, row.seq, "hash does not match the record's content")
            if row.seq == saved_seq:
                hash_at_saved = row.hash
            prev_hash, expected_seq, last_seq = row.hash, row.seq + 1, row.seq
            checked += 1
        session.expunge_all()
    tip = last_seq
    head = chain_head.load(session)
    if problem := _head_problem(head, public_key, tip, prev_hash, checked, total):
        return problem
    if saved_seq is not None:
        if saved_seq > tip:
            missing = (tip + 1, saved_seq)
            reason = _missing_reason(*missing, "behind your saved head: the chain was truncated or rolled back")
            return _broken(checked, total, tip + 1, reason, missing, head)
        if hash_at_saved != saved_hash:
            reason = f"record {saved_seq} is not the one your saved head names: the chain was rewritten or rolled back"
            return _broken(checked, total, saved_seq, reason, head=head)
    return {
        "ok": True,
        "checked": checked,
        "total": total,
        "first_broken_seq": None,
        "reason": None,
        "head_hash": prev_hash,
        "head": head,
        "missing_from_seq": None,
        "missing_to_seq": None,
    }


def _head_problem(
    head: dict[str, Any] | None, public_key: Ed25519PublicKey, tip: int, tip_hash: str, checked: int, total: int
) -> dict[str, Any] | None:
    """Why the chain (intact up to `tip`) does not end at its signed head; None if it does."""
    if head is None:
        return None if tip == 0 else _broken(checked, total, None, "the signed chain head is missing")
    try:
        chain_head.verify(head, public_key)
    except CertificateError as e:
        return _broken(checked, total, None, f"the signed chain head does not verify: {e}", head=head)
    if head["seq"] > tip:
        missing = (tip + 1, head["seq"])
        return _broken(checked, total, tip + 1, _missing_reason(*missing, "at the end of the chain"), missing, head)
    if head["seq"] < tip:
        reason = f"records {head['seq'] + 1}–{tip} come after the signed head: they were not appended by the service"
        return _broken(checked, total, head["seq"] + 1, reason, head=head)
    if head["hash"] != tip_hash:
        return _broken(checked, total, tip, "the newest record is not the one the signed head names", head=head)
    return None


def _missing_reason(first: int, last: int, where: str) -> str:
    return f"record {first} is missing {where}" if first == last else f"records {first}–{last} are missing {where}"


def _broken(
    checked: int,
    total: int,
    seq: int | None,
    reason: str,
    missing: tuple[int, int] | None = None,
    head: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "ok": False,
        "checked": checked,
        "total": total,
        "first_broken_seq": seq,
        "reason": reason,
        "head_hash": None,
        "head": head,
        "missing_from_seq": missing[0] if missing else None,
        "missing_to_seq": missing[1] if missing else None,
    }
