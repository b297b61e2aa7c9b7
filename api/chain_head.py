"""The signed head of the audit chain: the newest record's `seq` and `hash`, signed with the audit key.

The hash chain alone finds an edited or removed record *between* others, but not the removal of the newest
ones: `DELETE … WHERE seq = <last>` leaves a shorter chain that is still internally consistent. So every
append also writes a signed head, in the same transaction, to its own table (`audit_head`), and
`GET /v1/audits/verify` checks that the chain ends exactly at it: a head that names records which are gone
reports them as missing. A customer keeps heads outside the service (`GET /v1/audits/head`, like CloudTrail
digest files): an insider who also puts back an older signed head (a rollback) is caught by the newer head the
customer saved, which verify checks when it is given one.

The signature covers the canonical JSON of the document without `signature` (api/certificates.py), checked
offline with the audit public key (`GET /v1/keys/audit-public`). The key travels with the session factory
(`session.info`), so each process that appends to the chain (API, workers) signs with it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy.orm import Session

from unlearnd.api import certificates
from unlearnd.api.models import AuditHead, utcnow

FORMAT = "unlearnd-chain-head/1"
SIGNING_KEY = "unlearnd_audit_signing_key"  # session.info key of the Ed25519 private key
_ROW = 1


class SigningKeyUnavailable(RuntimeError):
    """A session without the audit key tried to append to the chain (a bug: every factory carries it)."""


def signing_key(session: Session) -> Ed25519PrivateKey:
    key = session.info.get(SIGNING_KEY)
    if key is None:
        raise SigningKeyUnavailable("this session has no audit signing key; build it with make_session_factory(…)")
    return key


def document(seq: int, hash: str, signed_at: datetime) -> dict[str, Any]:
    """The head without its signature: what is signed."""
    return {"format": FORMAT, "seq": seq, "hash": hash, "signed_at": signed_at.isoformat(timespec="microseconds")}


def advance(session: Session, seq: int, hash: str) -> dict[str, Any]:
    """Sign (`seq`, `hash`) as the chain's head and store it; the caller holds the chain lock and commits."""
    signed = certificates.sign(document(seq, hash, utcnow()), signing_key(session))
    _store(session, signed)
    return signed


def adopt(session: Session) -> bool:
    """Sign a head left unsigned by the migration that introduced heads (a chain older than them): at the
    first start after the upgrade, the service vouches for the chain as it found it. True if it signed."""
    row = session.get(AuditHead, _ROW)
    if row is None or row.signature is not None:
        return False
    advance(session, row.seq, row.hash)
    return True


def load(session: Session) -> dict[str, Any] | None:
    """The stored head as a signed document; None when there is none (an empty chain, or a deleted head)."""
    row = session.get(AuditHead, _ROW, populate_existing=True)
    if row is None:
        return None
    signed_at = row.signed_at.isoformat(timespec="microseconds") if row.signed_at else None
    signature = {"alg": certificates.ALG, "key_id": row.key_id, "value": row.signature} if row.signature else None
    return {"format": FORMAT, "seq": row.seq, "hash": row.hash, "signed_at": signed_at, "signature": signature}


def verify(doc: Any, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """Check a head's format and signature; return it, or raise certificates.CertificateError."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise certificates.CertificateError(f"not an {FORMAT} document")
    if type(doc.get("seq")) is not int or not isinstance(doc.get("hash"), str):
        raise certificates.CertificateError("the head lacks its seq or hash")
    certificates.check_signature(doc, public_key)
    return doc


def _store(session: Session, signed: dict[str, Any]) -> None:
    row = session.get(AuditHead, _ROW) or AuditHead(id=_ROW)
    row.seq, row.hash = signed["seq"], signed["hash"]
    row.signed_at = datetime.fromisoformat(signed["signed_at"])
    row.key_id, row.signature = signed["signature"]["key_id"], signed["signature"]["value"]
    session.add(row)
    session.flush()
