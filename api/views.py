"""Rows → response bodies. Kept apart from the routers so every endpoint shows a resource the same way."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api import schemas
from api.models import AdapterVersion, AuditRecord, BaseModel, ForgetRequest, Job, JobEvent, JobRequest


def progress(job: Job) -> schemas.ProgressOut:
    return schemas.ProgressOut(phase=job.phase, step=job.step, total=job.total, metrics=job.progress or {})


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
        retain_count=len(model.retain),
        holdout_count=len(model.holdout),
        active_adapter=schemas.AdapterRef(id=active.id, version=active.version) if active else None,
        created_at=model.created_at,
    )


def job_of_request(session: Session, request_id: str) -> Job:
    job = session.scalar(
        select(Job).join(JobRequest, JobRequest.job_id == Job.id).where(JobRequest.request_id == request_id)
    )
    assert job is not None, f"request {request_id} has no job"
    return job


def request_out(session: Session, req: ForgetRequest) -> schemas.ForgetRequestOut:
    job = job_of_request(session, req.id)
    adapter = session.scalar(select(AdapterVersion).where(AdapterVersion.job_id == job.id))
    audit = session.scalar(select(AuditRecord).where(AuditRecord.request_id == req.id))
    return schemas.ForgetRequestOut(
        id=req.id,
        status=req.status,
        job_id=job.id,
        model_id=req.model_id,
        subject_hash=req.subject_hash,
        legal_basis=req.legal_basis,
        ticket=req.ticket,
        record_count=req.record_count,
        record_hashes=req.record_hashes,
        probe_count=req.probe_count,
        config=job.config,
        progress=progress(job),
        adapter_version=schemas.AdapterRef(id=adapter.id, version=adapter.version) if adapter else None,
        audit_id=audit.id if audit else None,
        verdict=audit.verdict if audit else None,
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
        progress=progress(job),
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
