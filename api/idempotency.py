"""`Idempotency-Key` on POSTs, after the IETF draft "The Idempotency-Key HTTP Header Field".

- The first request with a key reserves it (per tenant) and runs; when it succeeds (status < 400) its
  status, `Location` and body are stored and every retry with the same key and the same request gets that
  stored response back, marked `Idempotent-Replayed: true`.
- The same key with a different request (method, path or JSON body) is 422 `idempotency_key_reused`.
- A retry while the first is still being processed is 409 `idempotency_key_in_flight`.
- Keys expire after `idempotency_ttl_seconds` (24 h); a failed first request (4xx/5xx) stores nothing, so
  the client may fix it and retry with the same key (Stripe's behaviour: nothing was created).

The request is identified by an HMAC of method, path and canonical JSON body, never the body itself: it
holds the personal data the caller asked to erase. The middleware in api/guard.py buffers the body and
captures the response; the dependency below (run after authentication and the scope check) decides.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from unlearnd.api.db import transaction
from unlearnd.api.deps import AppSettings, Caller, DbSession
from unlearnd.api.errors import IdempotencyKeyInFlight, IdempotencyKeyReused
from unlearnd.api.models import IdempotencyKey, utcnow
from unlearnd.api.settings import Settings

SCOPE_KEY = "unlearnd.idempotency"
IN_FLIGHT, COMPLETED = "in_flight", "completed"
# A POST here never runs a job in-request; a reservation older than this was left by a dead process.
IN_FLIGHT_TIMEOUT = timedelta(seconds=60)
REPLAYED_HEADERS = ("location", "content-type")


@dataclass
class Pending:
    """Put into the ASGI scope by the middleware for a POST with an Idempotency-Key."""

    body: bytes
    row_id: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


class IdempotentReplay(Exception):  # noqa: N818 - a control-flow signal, rendered by the handler below
    def __init__(self, status_code: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code, self.headers, self.body = status_code, headers, body


def fingerprint(settings: Settings, method: str, path: str, body: bytes) -> str:
    """HMAC of the request: equal for the same JSON whatever its whitespace or key order."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode() if body else b""
    except ValueError:
        canonical = body
    key = settings.secret_key.get_secret_value().encode()
    message = method.upper().encode() + b" " + path.encode() + b"\n" + canonical
    return hmac.new(key, b"idempotency:" + message, hashlib.sha256).hexdigest()


def reserve(
    session: Session, settings: Settings, tenant_id: str, key: str, fp: str, now: datetime | None = None
) -> int:
    """Reserve `key` for this request and return the reservation's id, or raise: IdempotentReplay (a stored
    response), IdempotencyKeyReused (another request), IdempotencyKeyInFlight (the first still runs).

    Commits what `session` holds first, then commits the reservation in its own transaction, so concurrent
    retries see it at once (on SQLite every transaction holds the write lock: a second session would wait)."""
    session.commit()
    for _ in range(2):  # a concurrent first insert loses on the unique constraint: look again
        try:
            with session.begin():
                return _reserve_once(session, settings, tenant_id, key, fp, now or utcnow())
        except IntegrityError:
            continue
    raise IdempotencyKeyInFlight(f"a request with Idempotency-Key {key!r} is being processed; retry later")


def _reserve_once(session: Session, settings: Settings, tenant_id: str, key: str, fp: str, now: datetime) -> int:
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= now))
    row = session.scalar(select(IdempotencyKey).where(IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key))
    if row is None:
        row = IdempotencyKey(
            tenant_id=tenant_id,
            key=key,
            fingerprint=fp,
            state=IN_FLIGHT,
            created_at=now,
            locked_until=now + IN_FLIGHT_TIMEOUT,
            expires_at=now + timedelta(seconds=settings.idempotency_ttl_seconds),
        )
        session.add(row)
        session.flush()
        return row.id
    if not hmac.compare_digest(row.fingerprint, fp):
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key!r} was already used for a different request",
            details={"idempotency_key": key},
        )
    if row.state == COMPLETED:
        raise IdempotentReplay(row.status_code or 200, dict(row.response_headers or {}), row.response_body or b"")
    if row.locked_until is not None and row.locked_until > now:
        raise IdempotencyKeyInFlight(
            f"a request with Idempotency-Key {key!r} is being processed; retry later",
            details={"idempotency_key": key},
        )
    row.locked_until = now + IN_FLIGHT_TIMEOUT  # abandoned by a process that died: take it over
    return row.id


def complete(sessions: sessionmaker[Session], row_id: int, status: int, headers: dict[str, str], body: bytes) -> None:
    with transaction(sessions) as session:
        session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.id == row_id)
            .values(
                state=COMPLETED, status_code=status, response_headers=headers, response_body=body, locked_until=None
            )
        )


def release(sessions: sessionmaker[Session], row_id: int) -> None:
    with transaction(sessions) as session:
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == row_id))


def finish(
    sessions: sessionmaker[Session], pending: Pending, status: int, headers: dict[str, str], body: bytes
) -> None:
    """Called by the middleware once the response is complete: store a success, forget a failure."""
    if pending.row_id is None:
        return
    if status < 400:
        kept = {k: v for k, v in headers.items() if k in REPLAYED_HEADERS}
        complete(sessions, pending.row_id, status, kept, body)
    else:
        release(sessions, pending.row_id)


def idempotent(
    request: Request,
    session: DbSession,
    caller: Caller,
    settings: AppSettings,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="Retries with the same key and body return the first response (kept 24 h).",
        ),
    ] = None,
) -> str | None:
    """Route dependency of every POST (after the scope check): reserve the key, or replay / refuse."""
    pending: Pending | None = request.scope.get(SCOPE_KEY)
    if idempotency_key is None or pending is None:
        return None
    fp = fingerprint(settings, request.method, request.url.path, pending.body)
    pending.row_id = reserve(session, settings, caller.tenant_id, idempotency_key, fp)
    return idempotency_key


IdempotencyKeyHeader = Annotated[str | None, Depends(idempotent)]


def replay_response(exc: IdempotentReplay) -> Any:
    from fastapi.responses import Response

    headers = {**exc.headers, "Idempotent-Replayed": "true"}
    media_type = headers.pop("content-type", "application/json")
    return Response(content=exc.body, status_code=exc.status_code, headers=headers, media_type=media_type)
