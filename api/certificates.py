"""Signed unlearning certificates: an audit record as a JSON document signed with Ed25519.

A certificate carries everything a data protection officer needs to show what was done for one request
(subject hash, per-record hashes and the salt to recompute them, model fingerprint, adapter sha256, metrics
before/after, thresholds, verdict, chain position, times) and is checked offline with the service's public
key (`GET /v1/keys/audit-public`, `unlearnd certificate verify FILE`). The signature covers the canonical
JSON of the document without its `signature` member (sorted keys, no whitespace, UTF-8), so it survives
re-indentation but not a changed value. The verifier also recomputes the audit record's chain hash from the
certificate's fields, tying the certificate to the tamper-evident log.

The signing key is an Ed25519 private key in PEM: `UNLEARND_AUDIT_SIGNING_KEY`, or the file
`UNLEARND_AUDIT_SIGNING_KEY_FILE` (default `<data_dir>/audit-signing-key.pem`, generated on first start in
development only; production refuses to start without one).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT = "unlearnd-certificate/1"
ALG = "Ed25519"
RECORD_HASH_ALGORITHM = (
    "sha256(record_salt + ':' + canonical JSON of the record {text | prompt, completion | messages})"
)
# The audit record's chained fields (api/audit.CHAINED_FIELDS) as certificate members: `id` is `audit_id`.
_RENAMED = {"id": "audit_id"}


class CertificateError(Exception):
    """A certificate that does not verify; the message says why."""


class SigningKeyMissing(RuntimeError):
    pass


# --- keys --------------------------------------------------------------------------------------------------


def load_signing_key(settings: Any) -> Ed25519PrivateKey:
    """The configured key; in development a missing key file is generated (0600) on first start."""
    if settings.audit_signing_key is not None:
        return _private_from_pem(settings.audit_signing_key.get_secret_value().encode())
    path: Path = settings.resolved_signing_key_file
    if path.is_file():
        return _private_from_pem(path.read_bytes())
    if settings.environment != "development":
        raise SigningKeyMissing(f"the audit signing key {path} does not exist (required outside development)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process of this deployment (API, worker) generated it first: use theirs
        return _private_from_pem(_read_when_written(path))
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


def _read_when_written(path: Path, timeout: float = 5.0) -> bytes:
    """The PEM another process is writing (created empty, then written): wait until it is complete."""
    deadline = time.monotonic() + timeout
    while b"END PRIVATE KEY" not in (data := path.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return data


def _private_from_pem(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyMissing("the audit signing key is not an Ed25519 private key")
    return key


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the sha256 of the raw public key: names the key in certificates."""
    return hashlib.sha256(raw_public(key)).hexdigest()[:16]


def public_key_document(key: Ed25519PublicKey) -> dict[str, str]:
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return {
        "alg": ALG,
        "key_id": key_id(key),
        "public_key": base64.b64encode(raw_public(key)).decode(),
        "pem": pem,
    }


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """A public key from a PEM file or from the JSON of `GET /v1/keys/audit-public`."""
    text = data.decode("utf-8", errors="replace").strip()
    if text.startswith("{"):
        doc = json.loads(text)
        if doc.get("pem"):
            text = doc["pem"]
        else:
            return Ed25519PublicKey.from_public_bytes(base64.b64decode(doc["public_key"], validate=True))
    key = serialization.load_pem_public_key(text.encode())
    if not isinstance(key, Ed25519PublicKey):
        raise CertificateError("the public key is not an Ed25519 key")
    return key


# --- documents ---------------------------------------------------------------------------------------------


def canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _value(v: Any) -> Any:
    return v.isoformat(timespec="microseconds") if isinstance(v, datetime) else v


def build(
    audit: Any,
    *,
    chained_fields: tuple[str, ...],
    record_salt: str | None,
    adapter_version: int | None,
    issued_at: datetime,
    key: Ed25519PrivateKey,
) -> dict[str, Any]:
    """The signed certificate of one audit record (an api.models.AuditRecord)."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "issuer": "unlearnd",
        "issued_at": _value(issued_at),
        "chained_fields": list(chained_fields),
        "record_salt": record_salt,
        "record_hash_algorithm": RECORD_HASH_ALGORITHM,
        "adapter_version": adapter_version,
        "hash": audit.hash,
    }
    for name in chained_fields:
        doc[_RENAMED.get(name, name)] = _value(getattr(audit, name))
    return sign(doc, key)


def sign(doc: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """`doc` with a `signature` member over the canonical JSON of the rest (certificates and chain heads)."""
    value = base64.b64encode(key.sign(canonical(doc))).decode()
    return {**doc, "signature": {"alg": ALG, "key_id": key_id(key.public_key()), "value": value}}


def check_signature(doc: dict[str, Any], public_key: Ed25519PublicKey) -> None:
    """Raise CertificateError unless `doc["signature"]` is `public_key`'s signature of the rest of `doc`."""
    signature = doc.get("signature")
    if not isinstance(signature, dict) or set(signature) != {"alg", "key_id", "value"}:
        raise CertificateError("the signature block is missing or malformed")
    if signature["alg"] != ALG:
        raise CertificateError(f"unsupported signature algorithm {signature['alg']!r}")
    if signature["key_id"] != key_id(public_key):
        raise CertificateError(f"signed by key {signature['key_id']}, not by the given public key {key_id(public_key)}")
    try:
        value = base64.b64decode(signature["value"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise CertificateError("the signature is not valid base64") from None
    if base64.b64encode(value).decode() != signature["value"]:
        raise CertificateError("the signature is not in canonical base64")
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    try:
        public_key.verify(value, canonical(unsigned))
    except (InvalidSignature, ValueError):
        raise CertificateError("the signature does not match the document's content") from None


def audit_hash(doc: dict[str, Any]) -> str:
    """Recompute the audit record's chain hash from the certificate (api/audit.compute_hash)."""
    fields = {name: doc[_RENAMED.get(name, name)] for name in doc["chained_fields"]}
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(body + str(doc["prev_hash"]).encode()).hexdigest()


def verify(doc: Any, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """Check the signature and the chain hash; return the document, or raise CertificateError."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CertificateError(f"not an {FORMAT} document")
    check_signature(doc, public_key)
    try:
        recomputed = audit_hash(doc)
    except (KeyError, TypeError):
        raise CertificateError("the certificate lacks fields of its audit record") from None
    if recomputed != doc.get("hash"):
        raise CertificateError("the audit record's chain hash does not match the certificate's fields")
    return doc


def verify_bytes(data: bytes, public_key: Ed25519PublicKey) -> dict[str, Any]:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CertificateError("the certificate is not valid UTF-8 JSON") from None
    return verify(doc, public_key)


def embedded_key_id(data: bytes) -> str | None:
    try:
        return json.loads(data)["signature"]["key_id"]
    except (ValueError, KeyError, TypeError):
        return None
