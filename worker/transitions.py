"""Terminal and intermediate job transitions, each one transaction with its events and request statuses.

Every function takes a WHERE precondition on the job (usually "still leased by me") and does nothing when
it no longer holds, so a stale worker cannot overwrite what another worker or a cancel already decided.
Every final outcome of a request is an audit record: `failed` and `cancelled` here, the published verdicts
in worker/publish.py. Once a request's audit exists its payload is purged (the service must not stay a
second copy of the data it was asked to erase).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from unlearnd.api import audit
from unlearnd.api.models import (
    CANCELLED,
    CANCELLING,
    FAILED,
    QUEUED,
    RUNNING,
    AuditRecord,
    BaseModel,
    ForgetRequest,
    Job,
    JobEvent,
    JobRequest,
    utcnow,
)
from unlearnd.worker import protocol


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> None:
    session.add(JobEvent(job_id=job_id, message=message, level=level, type=type, data=audit.json_safe(data or {})))


def requests_of(session: Session, job_id: str) -> list[ForgetRequest]:
    return list(
        session.scalars(
            select(ForgetRequest)
            .join(JobRequest, JobRequest.request_id == ForgetRequest.id)
            .where(JobRequest.job_id == job_id)
            .order_by(ForgetRequest.created_at)
        )
    )


def set_requests(session: Session, job_id: str, status: str, *, error: str | None = None, final: bool = False) -> None:
    """The status of the job's requests that have not ended (one cancelled on its own keeps its end)."""
    now = utcnow()
    for req in requests_of(session, job_id):
        if req.finished_at is not None:
            continue
        req.status = status
        req.error = error
        if final:
            req.finished_at = now
            purge_payload(req, now)


def purge_payload(req: ForgetRequest, now: datetime) -> None:
    """Issue 5's PII minimisation hook: after the outcome is recorded only the record hashes remain."""
    if req.payload_purged_at is None:  # not `req.payload`: the column is deferred, reading it loads the blob
        req.payload = None
        req.payload_purged_at = now


def new_audit(
    session: Session, req: ForgetRequest, job: Job, *, verdict: str, now: datetime, **fields: Any
) -> AuditRecord:
    model = session.get(BaseModel, job.model_id)
    record = AuditRecord(
        tenant_id=req.tenant_id,
        request_id=req.id,
        model_id=job.model_id,
        job_id=job.id,
        subject_hash=req.subject_hash,
        legal_basis=req.legal_basis,
        ticket=req.ticket,
        record_hashes=list(req.record_hashes),
        model_fingerprint=fields.pop("model_fingerprint", None) or (model.fingerprint if model else None),
        verdict=verdict,
        method=str(job.config.get("method", "")),
        config=dict(fields.pop("config", None) or job.config),
        requested_at=req.created_at,
        completed_at=now,
        **fields,
    )
    return audit.append(session, record)


def _transition(session: Session, where: ColumnElement[bool], **values: Any) -> bool:
    stmt = update(Job).where(where).values(updated_at=utcnow(), **values).execution_options(synchronize_session=False)
    return session.execute(stmt).rowcount == 1


def fail(session: Session, job_id: str, where: ColumnElement[bool], code: str, message: str) -> bool:
    """Job → failed, requests → failed with a `failed` audit each, an error event. False if `where` lost."""
    now = utcnow()
    if not _transition(
        session,
        where,
        status=FAILED,
        error=message,
        error_code=code,
        finished_at=now,
        lease_owner=None,
        lease_expires_at=None,
    ):
        return False
    add_event(session, job_id, message, level="error", data={"code": code})
    _audit_outcome(session, job_id, "failed", now, error=message)
    set_requests(session, job_id, FAILED, error=message, final=True)
    return True


def cancel_done(session: Session, job_id: str, where: ColumnElement[bool], message: str) -> bool:
    """Job → cancelled, requests → cancelled with a `cancelled` audit each (the payload goes with it)."""
    now = utcnow()
    if not _transition(session, where, status=CANCELLED, finished_at=now, lease_owner=None, lease_expires_at=None):
        return False
    add_event(session, job_id, message, level="warning")
    _audit_outcome(session, job_id, "cancelled", now)
    set_requests(session, job_id, CANCELLED, final=True)
    return True


def _audit_outcome(session: Session, job_id: str, verdict: str, now: datetime, **fields: Any) -> None:
    """An audit record of `verdict` for each of the job's requests that has none yet."""
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    for req in requests_of(session, job_id):
        if session.scalar(select(AuditRecord.id).where(AuditRecord.request_id == req.id)) is None:
            new_audit(session, req, job, verdict=verdict, now=now, **fields)


def release(session: Session, job_id: str, where: ColumnElement[bool], message: str, *, refund: bool = False) -> bool:
    """Give the job back to the queue (shutdown, transient error, stale parent version); the sweeper or the
    next start re-dispatches it. `refund` returns the attempt when the worker was not at fault."""
    values: dict[str, Any] = {
        "status": QUEUED,
        "lease_owner": None,
        "lease_expires_at": None,
        "dispatched_at": None,
    }
    if refund:
        values["attempts"] = Job.attempts - 1
    if not _transition(session, where, **values):
        return False
    add_event(session, job_id, message, level="warning")
    set_requests(session, job_id, QUEUED)
    return True


def cancel_one(session: Session, req: ForgetRequest, job: Job) -> str:
    """The API's cancel of one request. Alone in its job: the job is cancelled (`request_cancel`). In a job
    serving others too (coalesced): only this request ends — `cancelled`, audited, its payload purged; a queued
    job then runs without it, a running one goes on for the others and publishes nothing for it (the records
    it had already loaded were part of that run's unlearning). Returns the request's status afterwards."""
    others = [r for r in requests_of(session, job.id) if r.id != req.id and r.finished_at is None]
    if not others:
        request_cancel(session, job)
        session.flush()  # the requests' new status first: a refresh alone would read the old one back over it
        session.refresh(req)
        return req.status
    now = utcnow()
    new_audit(session, req, job, verdict="cancelled", now=now)
    req.status, req.error, req.finished_at = CANCELLED, None, now
    purge_payload(req, now)
    add_event(
        session, job.id, f"request {req.id} cancelled; the job goes on for {len(others)} other(s)", level="warning"
    )
    return CANCELLED


def request_cancel(session: Session, job: Job) -> str:
    """The API's cancel: a queued job is cancelled at once, a running one is flagged and stops between
    steps. Returns the job's status afterwards."""
    if cancel_done(session, job.id, (Job.id == job.id) & (Job.status == QUEUED), "cancelled before it started"):
        return CANCELLED
    if _transition(session, (Job.id == job.id) & (Job.status == RUNNING), status=CANCELLING, cancel_requested=True):
        add_event(session, job.id, "cancel requested; the job stops at its next step", level="warning")
        set_requests(session, job.id, CANCELLING)
        return CANCELLING
    return session.scalar(select(Job.status).where(Job.id == job.id)) or job.status


def fail_if_exhausted(session: Session, job_id: str, max_attempts: int) -> bool:
    """A job due to run again with no attempts left fails for good (no poison-pill loops)."""
    now = utcnow()
    attempts = session.scalar(select(Job.attempts).where(Job.id == job_id))
    where = (Job.id == job_id) & (Job.attempts >= max_attempts) & protocol.claimable(now)
    message = (
        f"gave up after {attempts} attempts: the worker stopped during every one "
        "(crashed, was killed or lost its lease)"
    )
    return fail(session, job_id, where, "attempts_exhausted", message)
