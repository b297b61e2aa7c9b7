"""The job protocol's SQL (DESIGN §2): claim, renew, and the sweeper's queries.

Each state change is a single conditional UPDATE whose WHERE clause is the precondition, so two workers
racing for a job cannot both win: the loser sees rowcount 0 and does nothing. Every write a running worker
makes afterwards is fenced by `lease_owner = me`, so a worker whose lease expired (and whose job another
worker took over) can no longer change the job.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, case, exists, or_, select, update
from sqlalchemy.orm import Session, aliased

from unlearnd.api.models import CANCELLING, QUEUED, RUNNING, Job

IN_FLIGHT = (RUNNING, CANCELLING)


def _lease_expired(now: datetime) -> ColumnElement[bool]:
    return and_(Job.status.in_(IN_FLIGHT), or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now))


def claimable(now: datetime) -> ColumnElement[bool]:
    return or_(Job.status == QUEUED, _lease_expired(now))


def _model_busy(now: datetime) -> ColumnElement[bool]:
    """Another job of the same model holds a live lease: versions are cumulative, so one model's jobs run
    one at a time (each starts from the version the previous one published)."""
    other = aliased(Job)
    return exists().where(
        other.model_id == Job.model_id,
        other.id != Job.id,
        other.status.in_(IN_FLIGHT),
        other.lease_expires_at >= now,
    )


def claim(session: Session, job_id: str, owner: str, now: datetime, lease_seconds: float, max_attempts: int) -> bool:
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.attempts < max_attempts, claimable(now), ~_model_busy(now))
        .values(
            # A job whose cancel was requested before its worker died stays `cancelling`: it stops at once.
            status=case((Job.status == CANCELLING, CANCELLING), else_=RUNNING),
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=Job.attempts + 1,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return session.execute(stmt).rowcount == 1


def owned(job_id: str, owner: str) -> ColumnElement[bool]:
    return and_(Job.id == job_id, Job.lease_owner == owner, Job.status.in_(IN_FLIGHT))


def renew(session: Session, job_id: str, owner: str, now: datetime, lease_seconds: float) -> bool:
    stmt = (
        update(Job)
        .where(owned(job_id, owner))
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return session.execute(stmt).rowcount == 1


def dispatchable(session: Session, now: datetime, queued_before: datetime, max_attempts: int) -> list[str]:
    """Jobs that need a (new) dispatch: queued and not dispatched since `queued_before`, or whose lease
    expired (their worker died), while they still have attempts left."""
    stale_queue = and_(Job.status == QUEUED, or_(Job.dispatched_at.is_(None), Job.dispatched_at <= queued_before))
    rows = session.scalars(
        select(Job.id)
        .where(Job.attempts < max_attempts, or_(stale_queue, _lease_expired(now)))
        .order_by(Job.created_at)
    )
    return list(rows)


def exhausted(session: Session, now: datetime, max_attempts: int) -> list[str]:
    """Jobs that are due to run again but have used every attempt: they must fail, not loop."""
    return list(session.scalars(select(Job.id).where(Job.attempts >= max_attempts, claimable(now))))


def mark_dispatched(session: Session, job_ids: list[str], now: datetime) -> None:
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.status == QUEUED)
            .values(dispatched_at=now)
            .execution_options(synchronize_session=False)
        )
