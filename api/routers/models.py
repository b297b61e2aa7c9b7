"""Base models: register, list, show, and their adapter versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from api import limits, schemas, views
from api.deps import ADAPTERS_READ, MODELS_ADMIN, AppSettings, Caller, DbSession, ModelDep, scope
from api.errors import Conflict, InvalidConfig, InvalidModelSource
from api.idempotency import IdempotencyKeyHeader
from api.models import AdapterVersion, BaseModel
from api.pagination import decode_cursor, encode_cursor
from core.config import ADAPTER_INITS, UnlearnConfig
from core.errors import InvalidInput

router = APIRouter(prefix="/v1/models", tags=["models"])

Limit = Annotated[int, Query(ge=1, le=200)]


def _check_source(source: str) -> str:
    """Only the existence of the directory is checked here (the API never loads weights); a directory
    that does not load fails its first job with a clear error."""
    path = Path(source).expanduser()
    if not path.is_dir():
        raise InvalidModelSource(f"model source {source!r} is not a directory on the server", {"source": source})
    return str(path.resolve())


def _check_defaults(defaults: schemas.ModelDefaultsIn | None) -> dict:
    if defaults is None:
        return {}
    values = defaults.model_dump(exclude_none=True)
    try:
        config = UnlearnConfig.from_dict(values)
    except InvalidInput as e:
        raise InvalidConfig(str(e)) from None
    if config.init not in ADAPTER_INITS:
        raise InvalidConfig(f"init {config.init!r} does not produce an adapter; choose one of {ADAPTER_INITS}")
    return values


@router.post("", status_code=201, response_model=schemas.ModelOut, dependencies=[scope(MODELS_ADMIN)])
def register_model(
    body: schemas.ModelIn,
    session: DbSession,
    settings: AppSettings,
    caller: Caller,
    _idempotency: IdempotencyKeyHeader,
) -> schemas.ModelOut:
    """Needs `models:admin`. Reference sets obey the per-record character limit."""
    for field, records in (("retain", body.retain), ("holdout", body.holdout)):
        limits.check_record_chars(settings, field, records)
    source = _check_source(body.source)
    defaults = _check_defaults(body.default_config)
    taken = session.scalar(
        select(BaseModel.id).where(BaseModel.tenant_id == caller.tenant_id, BaseModel.name == body.name)
    )
    if taken:
        raise Conflict(f"a model named {body.name!r} already exists", {"id": taken})
    model = BaseModel(
        tenant_id=caller.tenant_id,
        name=body.name,
        source=source,
        revision=body.revision,
        default_config=defaults,
        retain=[r.to_record().to_dict() for r in body.retain],
        holdout=[r.to_record().to_dict() for r in body.holdout],
    )
    session.add(model)
    session.commit()
    return views.model_out(session, model)


@router.get("", response_model=schemas.Page[schemas.ModelOut])
def list_models(session: DbSession, caller: Caller, limit: Limit = 50, cursor: str | None = None) -> dict:
    query = select(BaseModel).where(BaseModel.tenant_id == caller.tenant_id).order_by(BaseModel.id)
    if position := decode_cursor(cursor, "id"):
        query = query.where(BaseModel.id > position["id"])
    rows = session.scalars(query.limit(limit + 1)).all()
    page = rows[:limit]
    return {
        "data": [views.model_out(session, m) for m in page],
        "has_more": len(rows) > limit,
        "next": encode_cursor(id=page[-1].id) if len(rows) > limit else None,
    }


@router.get("/{id}", response_model=schemas.ModelOut)
def get_model(model: ModelDep, session: DbSession) -> schemas.ModelOut:
    return views.model_out(session, model)


@router.get("/{id}/adapters", response_model=schemas.Page[schemas.AdapterOut], dependencies=[scope(ADAPTERS_READ)])
def list_adapters(model: ModelDep, session: DbSession, limit: Limit = 50, cursor: str | None = None) -> dict:
    """Versions newest first; each names its parent (the version it extends)."""
    query = select(AdapterVersion).where(AdapterVersion.model_id == model.id).order_by(AdapterVersion.version.desc())
    if position := decode_cursor(cursor, "version"):
        query = query.where(AdapterVersion.version < int(position["version"]))
    rows = session.scalars(query.limit(limit + 1)).all()
    page = rows[:limit]
    return {
        "data": [views.adapter_out(a) for a in page],
        "has_more": len(rows) > limit,
        "next": encode_cursor(version=page[-1].version) if len(rows) > limit else None,
    }
