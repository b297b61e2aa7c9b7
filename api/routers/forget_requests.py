"""Forget requests: submit (202 + job), show status/progress/result, cancel."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from unlearnd.api import forget, schemas, views
from unlearnd.api.deps import (
    REQUEST,
    REQUESTS_READ,
    REQUESTS_WRITE,
    AppDispatcher,
    AppSettings,
    Caller,
    DbSession,
    RequestDep,
    ResourceId,
    not_found,
    scope,
)
from unlearnd.api.errors import AlreadyFinished
from unlearnd.api.idempotency import IdempotencyKeyHeader
from unlearnd.api.models import FINAL_STATUSES, ApiKey
from unlearnd.api.pagination import decode_cursor, encode_cursor
from unlearnd.api.schemas import ID_PATTERN
from unlearnd.worker.transitions import cancel_one

router = APIRouter(prefix="/v1/forget-requests", tags=["forget requests"])
log = logging.getLogger("unlearnd.api")


@router.post("", status_code=202, response_model=schemas.ForgetRequestOut, dependencies=[scope(REQUESTS_WRITE)])
def submit(
    body: schemas.ForgetRequestIn,
    session: DbSession,
    settings: AppSettings,
    caller: Caller,
    dispatcher: AppDispatcher,
    response: Response,
    idempotency_key: IdempotencyKeyHeader,
) -> schemas.ForgetRequestOut:
    """Needs `requests:write`. Commits the request and its job, then dispatches the job by id. A retry with
    the same `Idempotency-Key` and body gets the first response back (the request is not created twice)."""
    req, _ = forget.create(session, settings, caller, body, idempotency_key)
    out = views.request_out(session, req)
    session.commit()
    try:
        # A request that joined a waiting job re-dispatches it (harmless: a claim happens once); a new job
        # waits out the batching window first, gathering the requests that follow it.
        dispatcher.dispatch(out.job_id, delay=settings.batch_window_seconds)
    except Exception:  # committed is what counts: the sweeper dispatches it later
        log.warning("dispatch of %s failed; the sweeper will retry", out.job_id, exc_info=True)
    response.headers["Location"] = f"/v1/forget-requests/{out.id}"
    return out


@router.get("/{id}", response_model=schemas.ForgetRequestOut)
async def get_request(
    id: ResourceId, session: DbSession, caller: Annotated[ApiKey, scope(REQUESTS_READ)]
) -> schemas.ForgetRequestOut:
    """Needs `requests:read`. Shows the per-record hashes, never the records."""
    # Status polling is the hottest path: one worker-thread trip runs one SELECT and builds the body; being
    # async spares FastAPI a trip to validate it, and declaring the scope on `caller` (not as a route
    # dependency plus `Caller`) resolves one security dependency instead of two. Same checks, same order.
    out = await run_in_threadpool(_status, session, id, caller.tenant_id)
    if out is None:
        raise not_found(REQUEST)
    return out


def _status(session: Session, id: str, tenant_id: str) -> schemas.ForgetRequestOut | None:
    """Reads the status, then releases the connection at once (the session is read-only and done)."""
    try:
        return views.request_status(session, id, tenant_id)
    finally:
        session.close()


@router.post(
    "/{id}/cancel", status_code=202, response_model=schemas.ForgetRequestOut, dependencies=[scope(REQUESTS_WRITE)]
)
def cancel(req: RequestDep, session: DbSession, _idempotency: IdempotencyKeyHeader) -> schemas.ForgetRequestOut:
    """A queued request is cancelled at once; a running one stops at its next step (status `cancelling`). A
    request in a job that serves other requests too ends alone, and the job goes on for the others."""
    job = views.job_of_request(session, req.id)
    if job.status in FINAL_STATUSES or req.finished_at is not None:
        status = req.status if req.finished_at is not None else job.status
        raise AlreadyFinished(f"request {req.id} already {status}", {"status": status})
    cancel_one(session, req, job)
    session.commit()
    session.refresh(req)
    return views.request_out(session, req)


@router.get("", response_model=schemas.Page[schemas.ForgetRequestOut], dependencies=[scope(REQUESTS_READ)])
def list_requests(
    session: DbSession,
    caller: Caller,
    status: Annotated[str | None, Query(pattern=r"^[a-z_]{1,16}$", description="e.g. running, succeeded.")] = None,
    model_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> dict:
    """Needs `requests:read`. The tenant's requests, newest first, each with its progress, verdict and audit
    id (what the console's list shows); cursor pagination like every list."""
    position = decode_cursor(cursor, id="id")
    rows = views.request_page(
        session,
        caller.tenant_id,
        status=status,
        model_id=model_id,
        after_id=position["id"] if position else None,
        limit=limit + 1,
    )
    page = rows[:limit]
    return {
        "data": page,
        "has_more": len(rows) > limit,
        "next": encode_cursor(id=page[-1].id) if len(rows) > limit else None,
    }
