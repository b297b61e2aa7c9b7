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

from unlearnd.api.models import FAILED, SUCCEEDED, AdapterVersion, BaseModel, Job, utcnow
from unlearnd.core.verdict import FORGOTTEN, NOT_MEMORISED, PUBLISHED, UNVERIFIED
from unlearnd.worker import protocol
from unlearnd.worker.transitions import _transition, add_event, new_audit, purge_payload, requests_of


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
    outcome: str  # core/verdict.py: forgotten | unverified (what publishes a version)
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
    """What the audit keeps of a run: the metrics before and after, the original model's retain and holdout
    block ("kept" is measured against it), the verdict with its statistical evidence (core/verdict.py), the
    unlearning curve (`history`) and the per-record membership scores (`scores`: numbers, never text)."""
    keys = ("before", "after", "original", "verdict", "probes", "steps", "reached", "wall_seconds", "trainable_params")
    keys += ("history", "scores")  # the unlearning curve and the per-record scores: the report's plots
    return {k: report.get(k) for k in keys}


def audit_bounds(report: dict[str, Any]) -> dict[str, Any]:
    return dict((report.get("verdict") or {}).get("bounds") or report.get("thresholds") or {})


# Request outcomes that end the request `succeeded` (the others fail: nothing certified for it).
SUCCESS = (FORGOTTEN, UNVERIFIED, NOT_MEMORISED)


def request_metrics(report: dict[str, Any], request_id: str, default: str) -> tuple[str, dict[str, Any]]:
    """One request's outcome and audit metrics: the job's report with the verdict narrowed to this request's
    own records (core/pipeline.py `report["verdict"]["requests"]`, each entry named by `request_id` by the
    runner); the utility half is the job's. A report without per-request verdicts gives every request the
    job's outcome (`default`)."""
    metrics = audit_metrics(report)
    verdict = dict(report.get("verdict") or {})
    requests = verdict.pop("requests", None) or []
    mine = next((r for r in requests if r.get("request_id") == request_id), None)
    if mine is None and len(requests) == 1 and "request_id" not in requests[0]:
        mine = requests[0]  # a report of one request, not yet named
    if mine is not None:
        verdict.update({k: mine.get(k) for k in ("outcome", "before", "after")})
        verdict["records"] = mine.get("records")
        metrics["scores"] = mine.get("scores", metrics["scores"])  # this request's own forget records
    verdict["outcome"] = verdict.get("outcome") or default
    metrics["verdict"] = verdict
    return str(verdict["outcome"]), metrics


def _failed_conditions(verdict: dict[str, Any]) -> list[str]:
    return (verdict.get("after") or {}).get("failed", []) + (verdict.get("utility") or {}).get("failed", [])


def _conclude_requests(
    session: Session,
    job: Job,
    report: dict[str, Any],
    now,
    *,
    default: str,
    version: AdapterVersion | None,
    built: Built | None,
) -> list[str]:
    """An audit record and a final status for every request of the job, each with its own outcome; their
    payloads are purged with it. Returns the outcomes."""
    outcomes = []
    for req in requests_of(session, job.id):
        if req.finished_at is not None:  # cancelled on its own while the job ran: audited then
            continue
        outcome, metrics = request_metrics(report, req.id, default)
        ok = outcome in SUCCESS
        which = _failed_conditions(metrics["verdict"])
        message = None if ok else f"{outcome}: nothing certified" + (f" (failed: {', '.join(which)})" if which else "")
        new_audit(
            session,
            req,
            job,
            verdict=outcome,
            now=now,
            # the version serves this request only if its own verdict certifies it (forgotten / unverified)
            adapter_version_id=version.id if version is not None and outcome in PUBLISHED else None,
            adapter_sha256=built.sha256 if built is not None and outcome in PUBLISHED else None,
            model_fingerprint=(built.fingerprint if built else None) or report.get("model", {}).get("fingerprint"),
            metrics=metrics,
            thresholds=audit_bounds(report),
            config=dict(report.get("config") or job.config),
            error=message,
        )
        req.status = SUCCEEDED if ok else FAILED
        req.error = message
        req.finished_at = now
        purge_payload(req, now)
        outcomes.append(outcome)
    return outcomes


def conclude(
    session: Session, job_id: str, owner: str, outcome: str, report: dict[str, Any], fingerprint: str | None
) -> None:
    """A run that publishes no version, fenced by the lease like `publish`: the model never knew the records
    (`not_memorised`: the requests succeed, with the evidence audited), or unlearning could not be certified
    (`not_reached`, `model_damaged`: nothing is deployed, the requests fail and say which conditions failed)."""
    now = utcnow()
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise LostLease(job_id)
    failed = outcome not in SUCCESS
    which = _failed_conditions(report.get("verdict") or {})
    message = None
    if failed:
        message = f"{outcome}: nothing published" + (f" (failed: {', '.join(which)})" if which else "")
    if not _transition(
        session,
        protocol.owned(job_id, owner),
        status=FAILED if failed else SUCCEEDED,
        finished_at=now,
        lease_owner=None,
        lease_expires_at=None,
        error=message,
        error_code=outcome if failed else None,
    ):
        raise LostLease(job_id)
    report = {**report, "model": {**(report.get("model") or {}), "fingerprint": fingerprint}}
    outcomes = _conclude_requests(session, job, report, now, default=outcome, version=None, built=None)
    add_event(
        session,
        job_id,
        message
        or "the model did not know the records (as unfamiliar as never-seen data before any step): no new version",
        level="error" if failed else "info",
        data={"verdict": outcome, "failed": which, "requests": outcomes},
    )


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
    outcomes = _conclude_requests(session, job, report, now, default=built.outcome, version=version, built=built)
    add_event(
        session,
        job_id,
        f"published adapter version {number} ({built.outcome})",
        data={
            "adapter_id": version.id,
            "version": number,
            "sha256": built.sha256,
            "verdict": built.outcome,
            "requests": outcomes,
        },
    )
    return version
