"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy import func, select, text

from unlearnd.api.deps import MODELS_ADMIN, Caller, DbSession, scope
from unlearnd.api.errors import NotReady
from unlearnd.api.models import Job

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    """The process answers; nothing else is checked (that is /readyz)."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request, session: DbSession) -> dict:
    """Ready when the database answers and the dispatcher (and its sweeper) runs."""
    try:
        session.execute(text("SELECT 1"))
    except Exception as e:
        raise NotReady(f"database unavailable: {type(e).__name__}") from None
    dispatcher = request.app.state.dispatcher
    if not dispatcher.alive():
        raise NotReady(f"dispatcher {dispatcher.name!r} is not running")
    return {"status": "ready", "dispatcher": dispatcher.name}


@router.get(
    "/metrics",
    response_model=None,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
    dependencies=[scope(MODELS_ADMIN)],
)
def metrics(session: DbSession, caller: Caller) -> PlainTextResponse:
    """Prometheus text format: the caller's tenant's jobs by status (needs `models:admin`)."""
    rows = session.execute(
        select(Job.status, func.count()).where(Job.tenant_id == caller.tenant_id).group_by(Job.status)
    ).all()
    lines = ["# HELP unlearnd_jobs Jobs by status.", "# TYPE unlearnd_jobs gauge"]
    lines += [f'unlearnd_jobs{{status="{status}"}} {count}' for status, count in sorted(rows)]
    return PlainTextResponse("\n".join(lines) + "\n")  # errors stay JSON (and documented so)
