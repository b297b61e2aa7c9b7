"""Publishing a finished job: adapter version + audit records + statuses in ONE transaction, once per job.

Exactly-once comes from three guards: the job's transition to `succeeded` is fenced by this worker's lease
(a worker that lost its lease publishes nothing), `adapter_versions.job_id` and `audit_records.request_id`
are unique (a second publication of the same job cannot commit), and the parent check below (the model's
active version must still be the one this run started from) keeps versions cumulative when jobs of one
model race.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.models import SUCCEEDED, AdapterVersion, BaseModel, Job, utcnow
from worker import protocol
from worker.transitions import _transition, add_event, new_audit, requests_of, set_requests


class LostLease(Exception):
    """Another worker owns the job now (this one's lease expired): drop the result."""


class StaleParent(Exception):
    """The model's active version changed while this job ran: run again from the new one."""


@dataclass(frozen=True)
class Built:
    """What a run produced, ready to publish."""

    sha256: str
    size_bytes: int
    storage_uri: str
    report: dict[str, Any]
    reached: bool
    fingerprint: str | None


def active_version(session: Session, model_id: str) -> AdapterVersion | None:
    return session.scalar(
        select(AdapterVersion)
        .where(AdapterVersion.model_id == model_id, AdapterVersion.status == "active")
        .order_by(AdapterVersion.version.desc())
        .limit(1)
    )


def _lock_model(session: Session, model_id: str) -> None:
    """Serialise publishers of one model on PostgreSQL (SQLite's BEGIN IMMEDIATE already does)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(BaseModel.id).where(BaseModel.id == model_id).with_for_update())


def audit_metrics(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("before", "after", "probes", "steps", "reached", "wall_seconds", "trainable_params")
    return {k: report.get(k) for k in keys}


def publish(session: Session, job_id: str, owner: str, started_from: str | None, built: Built) -> AdapterVersion:
    now = utcnow()
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise LostLease(job_id)
    _lock_model(session, job.model_id)
    if session.scalar(select(Job.id).where(protocol.owned(job_id, owner))) is None:
        raise LostLease(job_id)
    parent = active_version(session, job.model_id)
    if (parent.id if parent else None) != started_from:
        raise StaleParent(f"active version changed from {started_from} to {parent.id if parent else None}")
    if not _transition(
        session,
        protocol.owned(job_id, owner),
        status=SUCCEEDED,
        finished_at=now,
        lease_owner=None,
        lease_expires_at=None,
        error=None,
        error_code=None,
    ):
        raise LostLease(job_id)
    report = built.report
    adapter_info = report.get("adapter") or {}
    number = (
        session.scalar(select(func.max(AdapterVersion.version)).where(AdapterVersion.model_id == job.model_id)) or 0
    ) + 1
    if parent is not None:
        parent.status = "superseded"
    version = AdapterVersion(
        tenant_id=job.tenant_id,
        model_id=job.model_id,
        version=number,
        parent_id=parent.id if parent else None,
        job_id=job.id,
        rank=int(adapter_info.get("rank", 0)),
        alpha=float(adapter_info.get("alpha", 0.0)),
        target_modules=list(adapter_info.get("target_modules") or []),
        sha256=built.sha256,
        size_bytes=built.size_bytes,
        storage_uri=built.storage_uri,
        status="active",
    )
    session.add(version)
    session.flush()
    verdict = "forgotten" if built.reached else "not_reached"
    for req in requests_of(session, job_id):
        new_audit(
            session,
            req,
            job,
            verdict=verdict,
            now=now,
            adapter_version_id=version.id,
            adapter_sha256=built.sha256,
            model_fingerprint=built.fingerprint,
            metrics=audit_metrics(report),
            thresholds=dict(report.get("thresholds") or {}),
            config=dict(report.get("config") or job.config),
        )
    set_requests(session, job_id, SUCCEEDED, final=True)
    add_event(
        session,
        job_id,
        f"published adapter version {number} ({verdict})",
        data={"adapter_id": version.id, "version": number, "sha256": built.sha256, "verdict": verdict},
    )
    return version
