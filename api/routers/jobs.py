"""Jobs and their event log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from unlearnd.api import schemas, views
from unlearnd.api.deps import REQUESTS_READ, DbSession, JobDep, scope
from unlearnd.api.models import JobEvent
from unlearnd.api.pagination import decode_cursor, encode_cursor

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[scope(REQUESTS_READ)])


@router.get("/{id}", response_model=schemas.JobOut)
def get_job(job: JobDep, session: DbSession) -> schemas.JobOut:
    return views.job_out(session, job)


@router.get("/{id}/events", response_model=schemas.Page[schemas.EventOut])
def list_events(
    job: JobDep,
    session: DbSession,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> dict:
    """Oldest first, so a client can follow a running job by passing `next` back."""
    query = select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id)
    if position := decode_cursor(cursor, id="int"):
        query = query.where(JobEvent.id > position["id"])
    rows = session.scalars(query.limit(limit + 1)).all()
    page = rows[:limit]
    last = page[-1].id if page else (position["id"] if position else 0)
    return {
        "data": [views.event_out(e) for e in page],
        "has_more": len(rows) > limit,
        "next": encode_cursor(id=last),
    }
