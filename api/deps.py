"""FastAPI dependencies, declared once as Annotated aliases: the session, the settings, the caller, and
loaders that turn an id in the path into a row of the caller's tenant or a 404."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Path, Request
from sqlalchemy.orm import Session

from api import security
from api.errors import NotFound, Unauthorized
from api.models import AdapterVersion, ApiKey, AuditRecord, BaseModel, ForgetRequest, Job
from api.settings import Settings
from worker.dispatch import Dispatcher

M = TypeVar("M")


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.session_factory() as session:
        yield session


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


DbSession = Annotated[Session, Depends(get_session)]
AppSettings = Annotated[Settings, Depends(get_settings)]
AppDispatcher = Annotated[Dispatcher, Depends(get_dispatcher)]


def authenticate(
    session: DbSession,
    settings: AppSettings,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> ApiKey:
    """`Authorization: Bearer <key>`; a missing, unknown or revoked key is 401 (no hint which)."""
    if not authorization:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    row = security.find_api_key(session, settings, key.strip())
    if row is None:
        raise Unauthorized("invalid or revoked API key")
    return row


Caller = Annotated[ApiKey, Depends(authenticate)]


def _loader(model: type[M], kind: str) -> Callable[..., M]:
    """A dependency loading `model` by the `{id}` path parameter, 404 unless it belongs to the caller's tenant
    (another tenant's ids are indistinguishable from ids that do not exist)."""

    def load(id: Annotated[str, Path(max_length=40)], session: DbSession, caller: Caller) -> M:
        row: Any = session.get(model, id)
        if row is None or row.tenant_id != caller.tenant_id:
            raise NotFound(f"{kind} {id!r} not found", details={"resource": kind, "id": id})
        return row

    load.__name__ = f"load_{kind.replace(' ', '_')}"
    return load


ModelDep = Annotated[BaseModel, Depends(_loader(BaseModel, "model"))]
RequestDep = Annotated[ForgetRequest, Depends(_loader(ForgetRequest, "forget request"))]
JobDep = Annotated[Job, Depends(_loader(Job, "job"))]
AdapterDep = Annotated[AdapterVersion, Depends(_loader(AdapterVersion, "adapter"))]
AuditDep = Annotated[AuditRecord, Depends(_loader(AuditRecord, "audit record"))]
