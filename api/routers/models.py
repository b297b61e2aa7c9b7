"""Base models: register, list, show, and their adapter versions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from unlearnd.api import limits, model_sources, schemas, views
from unlearnd.api.chat import check_chat_records
from unlearnd.api.deps import ADAPTERS_READ, MODELS_ADMIN, AppSettings, Caller, DbSession, ModelDep, scope
from unlearnd.api.errors import Conflict, InvalidConfig, InvalidModelSource
from unlearnd.api.idempotency import IdempotencyKeyHeader
from unlearnd.api.models import AdapterVersion, BaseModel
from unlearnd.api.pagination import decode_cursor, encode_cursor
from unlearnd.core.config import ADAPTER_INITS, UnlearnConfig
from unlearnd.core.errors import InvalidInput

router = APIRouter(prefix="/v1/models", tags=["models"])

Limit = Annotated[int, Query(ge=1, le=200)]


def _check_source(settings: AppSettings, source: str) -> str:
    """The source's name relative to its model root (api/model_sources.py). The API never loads weights: a
    model directory that does not load fails its first job with a clear error. One answer for every refusal,
    without the source, so it cannot be used to probe the server's files."""
    try:
        return model_sources.resolve(settings.resolved_model_roots, source).name
    except model_sources.SourceRefused:
        raise InvalidModelSource(
            "the source must name a model directory (with a config.json) inside one of the server's model "
            "roots, as a path relative to the root or an absolute path inside it"
        ) from None


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
    source = _check_source(settings, body.source)
    check_chat_records(settings, source, [r.to_record() for r in (*body.retain, *body.holdout)])
    defaults = _check_defaults(body.default_config)
    taken = session.scalar(
        select(BaseModel.id).where(BaseModel.tenant_id == caller.tenant_id, BaseModel.name == body.name)
    )
    if taken:
        raise Conflict("a model with this name already exists in your tenant", {"id": taken})
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
    if position := decode_cursor(cursor, id="id"):
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
    if position := decode_cursor(cursor, version="int"):
        query = query.where(AdapterVersion.version < position["version"])
    rows = session.scalars(query.limit(limit + 1)).all()
    page = rows[:limit]
    return {
        "data": [views.adapter_out(a) for a in page],
        "has_more": len(rows) > limit,
        "next": encode_cursor(version=page[-1].version) if len(rows) > limit else None,
    }
