"""Rows → response bodies. Kept apart from the routers so every endpoint shows a resource the same way."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, bindparam, select, tuple_
from sqlalchemy.orm import Session

from unlearnd.api import schemas
from unlearnd.api.models import (
    FINAL_STATUSES,
    AdapterVersion,
    AuditRecord,
    BaseModel,
    ForgetRequest,
    Job,
    JobEvent,
    JobRequest,
)

DONE = "done"  # the phase a finished job shows


def progress(job: Job | Row[Any], status: str) -> schemas.ProgressOut:
    """A job's progress, from its row or from a `_STATUS` row (same column names). A finished job's phase is
    `done`: the worker's last write (`exporting`, or the phase a failure interrupted) is history by then."""
    phase = DONE if status in FINAL_STATUSES else job.phase
    return schemas.ProgressOut(phase=phase, step=job.step, total=job.total, metrics=job.progress or {})


def model_out(session: Session, model: BaseModel) -> schemas.ModelOut:
    active = session.scalar(
        select(AdapterVersion)
        .where(AdapterVersion.model_id == model.id, AdapterVersion.status == "active")
        .order_by(AdapterVersion.version.desc())
        .limit(1)
    )
    return schemas.ModelOut(
        id=model.id,
        name=model.name,
        source=model.source,
        revision=model.revision,
        fingerprint=model.fingerprint,
        default_config=model.default_config,
        retain_count=model.retain_count,
        holdout_count=model.holdout_count,
        retain_sha256=model.retain_sha256,
        holdout_sha256=model.holdout_sha256,
        active_adapter=schemas.AdapterRef(id=active.id, version=active.version) if active else None,
        created_at=model.created_at,
    )


def job_of_request(session: Session, request_id: str) -> Job:
    job = session.scalar(
        select(Job).join(JobRequest, JobRequest.job_id == Job.id).where(JobRequest.request_id == request_id)
    )
    assert job is not None, f"request {request_id} has no job"
    return job


# A request's status in one SELECT: the request's shown columns, its job's, and the ids of its audit and of
# the version that audit names. Each join matches at most one row (job_requests.request_id and
# audit_records.request_id are unique). The encrypted payload is never selected.
_STATUS = (
    select(
        ForgetRequest.id,
        ForgetRequest.status,
        ForgetRequest.model_id,
        ForgetRequest.subject_hash,
        ForgetRequest.legal_basis,
        ForgetRequest.ticket,
        ForgetRequest.record_count,
        ForgetRequest.record_hashes,
        ForgetRequest.probe_count,
        ForgetRequest.error,
        ForgetRequest.created_at,
        ForgetRequest.finished_at,
        Job.id.label("job_id"),
        Job.status.label("job_status"),
        Job.config.label("job_config"),
        Job.phase,
        Job.step,
        Job.total,
        Job.progress,
        AdapterVersion.id.label("adapter_id"),
        AdapterVersion.version.label("adapter_version"),
        AuditRecord.id.label("audit_id"),
        AuditRecord.verdict,
    )
    .select_from(ForgetRequest)
    .outerjoin(JobRequest, JobRequest.request_id == ForgetRequest.id)
    .outerjoin(Job, Job.id == JobRequest.job_id)
    .outerjoin(AuditRecord, AuditRecord.request_id == ForgetRequest.id)
    # the version this request's own audit names: a request of a coalesced job that failed its own verdict
    # (or never needed one) shows none, whatever the job published for the others
    .outerjoin(AdapterVersion, AdapterVersion.id == AuditRecord.adapter_version_id)
)
# Built once with bound parameters: each call executes the very same statement object, so SQLAlchemy reuses
# its memoised cache key and result metadata instead of rebuilding and re-adapting them per call.
_STATUS_OF_REQUEST = _STATUS.where(ForgetRequest.id == bindparam("request_id"))
_STATUS_OF_TENANT = _STATUS_OF_REQUEST.where(ForgetRequest.tenant_id == bindparam("tenant_id"))


def request_status(session: Session, request_id: str, tenant_id: str) -> schemas.ForgetRequestOut | None:
    """`GET /v1/forget-requests/{id}`: what `request_out` shows, in one statement on the session's connection
    (Core rows, no ORM objects: status polling is the hottest path). None for an unknown id or another
    tenant's, which are indistinguishable."""
    params = {"request_id": request_id, "tenant_id": tenant_id}
    row = session.connection().execute(_STATUS_OF_TENANT, params).one_or_none()
    return None if row is None else _request_body(row, row)


def request_page(
    session: Session, tenant_id: str, *, status: str | None, model_id: str | None, after_id: str | None, limit: int
) -> list[schemas.ForgetRequestOut]:
    """`GET /v1/forget-requests`: up to `limit` of the tenant's requests, newest first (created_at, then id),
    after the request `after_id` (the cursor; one of another tenant or unknown ends the list)."""
    query = _STATUS.where(ForgetRequest.tenant_id == tenant_id)
    if status is not None:
        query = query.where(ForgetRequest.status == status)
    if model_id is not None:
        query = query.where(ForgetRequest.model_id == model_id)
    if after_id is not None:
        after = (
            select(ForgetRequest.created_at)
            .where(ForgetRequest.id == after_id, ForgetRequest.tenant_id == tenant_id)
            .scalar_subquery()
        )
        query = query.where(tuple_(ForgetRequest.created_at, ForgetRequest.id) < tuple_(after, after_id))
    query = query.order_by(ForgetRequest.created_at.desc(), ForgetRequest.id.desc()).limit(limit)
    return [_request_body(row, row) for row in session.execute(query).all()]


def request_out(session: Session, req: ForgetRequest) -> schemas.ForgetRequestOut:
    """A request of this session (just created or changed) with its job and what the job published."""
    return _request_body(req, session.execute(_STATUS_OF_REQUEST, {"request_id": req.id}).one())


def _request_body(req: ForgetRequest | Row[Any], links: Row[Any]) -> schemas.ForgetRequestOut:
    """The one place a request's body is built: `req` has the request's columns (an ORM object or a `_STATUS`
    row), `links` is the `_STATUS` row (job, adapter, audit)."""
    assert links.job_id is not None, f"request {req.id} has no job"
    return schemas.ForgetRequestOut(
        id=req.id,
        status=req.status,
        job_id=links.job_id,
        model_id=req.model_id,
        subject_hash=req.subject_hash,
        legal_basis=req.legal_basis,
        ticket=req.ticket,
        record_count=req.record_count,
        record_hashes=req.record_hashes,
        probe_count=req.probe_count,
        config=links.job_config,
        progress=progress(links, links.job_status),
        adapter_version=(
            schemas.AdapterRef(id=links.adapter_id, version=links.adapter_version) if links.adapter_id else None
        ),
        audit_id=links.audit_id,
        verdict=links.verdict,
        error=req.error,
        created_at=req.created_at,
        finished_at=req.finished_at,
    )


def job_out(session: Session, job: Job) -> schemas.JobOut:
    request_ids = session.scalars(select(JobRequest.request_id).where(JobRequest.job_id == job.id)).all()
    return schemas.JobOut(
        id=job.id,
        model_id=job.model_id,
        status=job.status,
        attempts=job.attempts,
        cancel_requested=job.cancel_requested,
        progress=progress(job, job.status),
        request_ids=list(request_ids),
        config=job.config,
        error=job.error,
        error_code=job.error_code,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def event_out(event: JobEvent) -> schemas.EventOut:
    return schemas.EventOut.model_validate(event, from_attributes=True)


def adapter_out(adapter: AdapterVersion) -> schemas.AdapterOut:
    return schemas.AdapterOut(
        id=adapter.id,
        model_id=adapter.model_id,
        version=adapter.version,
        parent_id=adapter.parent_id,
        job_id=adapter.job_id,
        rank=adapter.rank,
        alpha=adapter.alpha,
        target_modules=adapter.target_modules,
        sha256=adapter.sha256,
        size_bytes=adapter.size_bytes,
        status=adapter.status,
        created_at=adapter.created_at,
        download_url=f"/v1/adapters/{adapter.id}/download",
    )


def audit_out(record: AuditRecord) -> schemas.AuditOut:
    return schemas.AuditOut.model_validate(record, from_attributes=True)
