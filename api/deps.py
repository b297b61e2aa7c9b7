"""FastAPI dependencies, declared once as Annotated aliases: the session, the settings, the caller, and
loaders that turn an id in the path into a row of the caller's tenant or a 404."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from unlearnd.api import security
from unlearnd.api.errors import InsufficientScope, NotFound, RateLimited, Unauthorized
from unlearnd.api.models import AdapterVersion, ApiKey, AuditRecord, BaseModel, ForgetRequest, Job
from unlearnd.api.ratelimit import RateLimiter, retry_after_header
from unlearnd.api.schemas import ID_PATTERN
from unlearnd.api.settings import Settings
from unlearnd.worker.dispatch import Dispatcher

M = TypeVar("M")


async def get_session(request: Request) -> AsyncIterator[Session]:
    """The request's session: read-only for GET/HEAD (see api/db.py). Async so that it costs no worker-thread
    round trip: creating a session does no I/O (the first query, in a worker thread, checks a connection out).
    Closing one that still holds a connection is I/O (rollback, return to the pool): it runs in a thread,
    shielded from cancellation and outside the thread limit, as FastAPI runs a sync dependency's exit."""
    read_only = request.method in ("GET", "HEAD")
    state = request.app.state
    session = state.read_session_factory() if read_only else state.session_factory()
    try:
        yield session
    finally:
        if session.in_transaction():
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(session.close, limiter=anyio.CapacityLimiter(1))
        else:
            session.close()  # nothing checked out: no I/O


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


DbSession = Annotated[Session, Depends(get_session)]
AppSettings = Annotated[Settings, Depends(get_settings)]
AppDispatcher = Annotated[Dispatcher, Depends(get_dispatcher)]


bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key: `Authorization: Bearer uk_…` (see `unlearnd keys create`).",
)


async def authenticate(
    security_scopes: SecurityScopes,
    request: Request,
    session: DbSession,
    settings: AppSettings,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ApiKey:
    """`Authorization: Bearer <key>`; a missing, unknown or revoked key is 401 (no hint which), a key without
    the scopes the endpoint declares is 403. The key is looked up (and rate limited) once per request, in a
    worker thread; the scope check and every later use of the key on this request need no thread."""
    row: ApiKey | None = getattr(request.state, "api_key", None)
    if row is None:
        row = await run_in_threadpool(_lookup, request, session, settings, credentials)
        request.state.api_key = row
    missing = [s for s in security_scopes.scopes if s not in (row.scopes or [])]
    if missing:
        raise InsufficientScope(
            f"this API key lacks the scope {', '.join(missing)}",
            details={"required": security_scopes.scopes, "missing": missing},
        )
    return row


def _lookup(
    request: Request, session: Session, settings: Settings, credentials: HTTPAuthorizationCredentials | None
) -> ApiKey:
    if credentials is None or not credentials.credentials.strip():
        if request.headers.get("authorization"):
            raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    row = security.find_api_key(session, settings, credentials.credentials.strip())
    if row is None:
        raise Unauthorized("invalid or revoked API key")
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None and (wait := limiter.take(row.id)) > 0:
        raise RateLimited(
            f"rate limit of key {row.prefix} exceeded; retry later",
            retry_after=retry_after_header(wait),
            details={"per_minute": settings.rate_limit_per_minute, "burst": settings.rate_limit_burst},
        )
    return row


def scope(name: str) -> Any:
    """A route dependency: the caller's key must hold scope `name` (else 403 `insufficient_scope`)."""
    return Security(authenticate, scopes=[name])


Caller = Annotated[ApiKey, Security(authenticate)]

# Scopes (README "Security and compliance"): which endpoints each one opens.
MODELS_ADMIN, REQUESTS_WRITE, REQUESTS_READ, ADAPTERS_READ, AUDIT_READ = security.ALL_SCOPES


ResourceId = Annotated[str, Path(pattern=ID_PATTERN)]


def not_found(kind: str) -> NotFound:
    """The 404 of an id that does not exist or belongs to another tenant (the two are indistinguishable).
    The id is not echoed: error bodies never repeat what the caller sent."""
    return NotFound(f"{kind} not found", details={"resource": kind})


def _loader(model: type[M], kind: str) -> Callable[..., M]:
    """A dependency loading `model` by the `{id}` path parameter, 404 unless it belongs to the caller's tenant
    (another tenant's ids are indistinguishable from ids that do not exist)."""

    def load(id: ResourceId, session: DbSession, caller: Caller) -> M:
        row: Any = session.get(model, id)
        if row is None or row.tenant_id != caller.tenant_id:
            raise not_found(kind)
        return row

    load.__name__ = f"load_{kind.replace(' ', '_')}"
    return load


ModelDep = Annotated[BaseModel, Depends(_loader(BaseModel, "model"))]
REQUEST = "forget request"
RequestDep = Annotated[ForgetRequest, Depends(_loader(ForgetRequest, REQUEST))]
JobDep = Annotated[Job, Depends(_loader(Job, "job"))]
AdapterDep = Annotated[AdapterVersion, Depends(_loader(AdapterVersion, "adapter"))]
AuditDep = Annotated[AuditRecord, Depends(_loader(AuditRecord, "audit record"))]
