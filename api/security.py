"""API keys, subject references and record hashes: everything keyed by the server secret.

Keys look like `uk_<prefix>_<secret>`; only the prefix (for humans: listing, revocation) and
HMAC-SHA256(server secret, key) are stored, and a presented key is found by its HMAC, so the database alone
never lets anyone authenticate.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from unlearnd.api.models import ApiKey, Tenant, utcnow
from unlearnd.api.settings import Settings
from unlearnd.core.records import Record

ALL_SCOPES = ("models:admin", "requests:write", "requests:read", "adapters:read", "audit:read")
DEFAULT_TENANT = "default"


def _hmac(settings: Settings, purpose: str, value: str) -> str:
    key = settings.secret_key.get_secret_value().encode()
    return hmac.new(key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def hash_api_key(settings: Settings, key: str) -> str:
    return _hmac(settings, "api-key", key)


def subject_hash(settings: Settings, subject_id: str) -> str:
    """Keyed hash of the caller's subject id: stable, so audits can be queried by subject, but not
    reversible by someone who reads the database without the server secret."""
    return _hmac(settings, "subject", subject_id)


def record_hash(salt: str, record: Record) -> str:
    """Salted sha256 of a record's canonical JSON: proves which records were erased without keeping them."""
    canonical = json.dumps(record.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{salt}:{canonical}".encode()).hexdigest()


def new_salt() -> str:
    return secrets.token_hex(16)


def generate_api_key() -> tuple[str, str]:
    """A new key and its visible prefix."""
    prefix = f"uk_{secrets.token_hex(4)}"
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


def display_prefix(key: str) -> str:
    parts = key.split("_")
    if len(parts) >= 3 and parts[0] == "uk":
        return f"uk_{parts[1]}"
    return f"boot_{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def ensure_tenant(session: Session, name: str = DEFAULT_TENANT) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_api_key(
    session: Session,
    settings: Settings,
    *,
    tenant: str = DEFAULT_TENANT,
    name: str = "",
    scopes: tuple[str, ...] = ALL_SCOPES,
    key: str | None = None,
) -> tuple[ApiKey, str]:
    """Store a key (a new random one unless `key` is given) and return the row and the key itself."""
    if key is None:
        key, prefix = generate_api_key()
    else:
        prefix = display_prefix(key)
    row = ApiKey(
        tenant_id=ensure_tenant(session, tenant).id,
        name=name,
        prefix=prefix,
        secret_hash=hash_api_key(settings, key),
        scopes=list(scopes),
    )
    session.add(row)
    session.flush()
    return row, key


# Every authenticated request runs this; one prebuilt statement keeps SQLAlchemy's cache key memoised.
_KEY_BY_HASH = select(ApiKey).where(ApiKey.secret_hash == bindparam("secret_hash"))


def find_api_key(session: Session, settings: Settings, key: str) -> ApiKey | None:
    row = session.scalar(_KEY_BY_HASH, {"secret_hash": hash_api_key(settings, key)})
    if row is None or row.revoked_at is not None:
        return None
    return row


def ensure_bootstrap_key(session: Session, settings: Settings) -> None:
    """`UNLEARND_BOOTSTRAP_KEY`: make sure an admin key with exactly that secret exists (idempotent)."""
    if settings.bootstrap_key is None:
        return
    key = settings.bootstrap_key.get_secret_value()
    if session.scalar(select(ApiKey).where(ApiKey.secret_hash == hash_api_key(settings, key))) is None:
        create_api_key(session, settings, name="bootstrap", key=key)


def touch(row: ApiKey) -> None:
    row.last_used_at = utcnow()


def parse_scopes(values: list[str] | tuple[str, ...] | str | None) -> tuple[str, ...]:
    """`["requests:write,requests:read", "audit:read"]` → a validated tuple; `all` means every scope."""
    if values is None:
        return ALL_SCOPES
    items = [values] if isinstance(values, str) else list(values)
    scopes: list[str] = []
    for item in items:
        for scope in (s.strip() for s in item.split(",")):
            if not scope:
                continue
            if scope == "all":
                scopes.extend(ALL_SCOPES)
            elif scope not in ALL_SCOPES:
                raise ValueError(f"unknown scope {scope!r}; choose from {', '.join(ALL_SCOPES)} (or 'all')")
            else:
                scopes.append(scope)
    if not scopes:
        raise ValueError("a key needs at least one scope")
    return tuple(dict.fromkeys(scopes))


def revoke_api_key(session: Session, prefix: str) -> ApiKey | None:
    """Revoke the key with this visible prefix (idempotent); it answers 401 from its next request on."""
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
    return row
