"""`run_job(job_id)`: the one job function, whichever dispatcher called it (DESIGN §2).

claim (or do nothing) → load inputs → borrow the base model → core.pipeline.run_forget with progress and
cooperative cancel → pack the adapter into the blob store → publish version + audit in one transaction.
Every failure ends in a definite state: core's errors fail the job with their message; a stop of the
process or a stale parent version returns it to the queue; an unexpected error is retried until the
attempt cap.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from unlearnd.api import model_sources
from unlearnd.api.archive import pack_dir, unpack
from unlearnd.api.crypto import decrypt_payload
from unlearnd.api.db import transaction
from unlearnd.api.models import RUNNING, BaseModel, Job, utcnow
from unlearnd.core.errors import Cancelled, CoreError, InvalidInput, ModelLoadError
from unlearnd.core.records import Probe, Record
from unlearnd.core.verdict import NOT_MEMORISED
from unlearnd.worker import protocol, scratch, transitions
from unlearnd.worker.model_cache import model_cache
from unlearnd.worker.publish import Built, LostLease, StaleParent, active_version, conclude, publish
from unlearnd.worker.reporter import Heartbeat, JobReporter
from unlearnd.worker.runtime import Runtime, default_runtime

log = logging.getLogger("unlearnd.worker")

# Outcomes (for dispatchers and tests; the database holds the real state).
NOT_CLAIMED, SUCCEEDED, FAILED, CANCELLED, RELEASED, LOST = (
    "not_claimed",
    "succeeded",
    "failed",
    "cancelled",
    "released",
    "lost_lease",
)


@dataclass
class JobInputs:
    model_id: str
    source: str
    registered_fingerprint: str | None
    config: dict[str, Any]
    forget: list[Record]
    probes: list[Probe]
    groups: list[list[int]]
    request_ids: list[str]
    retain: list[Record]
    holdout: list[Record]
    parent_id: str | None
    parent_uri: str | None
    attempt: int
    # restore: the registered checkpoint from before the corrupting data (config["restore_from"])
    teacher_source: str | None = None
    teacher_fingerprint: str | None = None


def run_job(job_id: str, runtime: Runtime | None = None) -> str:
    rt = runtime or default_runtime()
    settings = rt.settings
    with transaction(rt.sessions) as session:
        _serialise_claims_of_model(session, job_id)
        now = utcnow()
        if not protocol.claim(session, job_id, rt.owner, now, settings.lease_seconds, settings.max_attempts):
            transitions.fail_if_exhausted(session, job_id, settings.max_attempts)
            return NOT_CLAIMED
        job = session.get(Job, job_id, populate_existing=True)
        assert job is not None
        if job.started_at is None:
            job.started_at = now
        transitions.add_event(
            session,
            job_id,
            f"attempt {job.attempts} of {settings.max_attempts} started",
            data={"attempt": job.attempts, "worker": rt.owner},
        )
        transitions.set_requests(session, job_id, RUNNING)
    reporter = JobReporter(rt, job_id)
    fenced = protocol.owned(job_id, rt.owner)
    try:
        with Heartbeat(rt, reporter):
            return _execute(rt, job_id, reporter)
    except Cancelled:
        return _stopped(rt, job_id, reporter)
    except StaleParent as e:
        _in_tx(rt, transitions.release, job_id, fenced, f"re-queued: {e}", refund=True)
        return RELEASED
    except LostLease:
        log.warning("job %s: lease lost to another worker; result dropped", job_id)
        return LOST
    except CoreError as e:
        message = f"{_prefix(e)}{e}"
        _in_tx(rt, transitions.fail, job_id, fenced, e.code, message)
        return FAILED
    except Exception as e:  # a bug or a transient fault: retry until the cap, then fail for good
        log.exception("job %s crashed", job_id)
        return _crashed(rt, job_id, e)


def _serialise_claims_of_model(session: Session, job_id: str) -> None:
    """On PostgreSQL, claims of one model's jobs queue on the model's row lock (the lock publish takes).

    The claim's "model not busy" condition reads other jobs' rows; under READ COMMITTED two workers claiming
    two jobs of one model at the same moment would both see it free. With the lock, the second claim runs
    after the first committed and sees its lease. SQLite's BEGIN IMMEDIATE already serialises claims.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    model_id = session.scalar(select(Job.model_id).where(Job.id == job_id))
    if model_id is not None:
        session.execute(select(BaseModel.id).where(BaseModel.id == model_id).with_for_update())


def _prefix(e: CoreError) -> str:
    return "model could not be loaded: " if isinstance(e, ModelLoadError) else ""


def _execute(rt: Runtime, job_id: str, reporter: JobReporter) -> str:
    from unlearnd.core.config import UnlearnConfig
    from unlearnd.core.device import set_cpu_threads
    from unlearnd.core.pipeline import run_forget

    set_cpu_threads(rt.settings.torch_threads)
    inputs = _load_inputs(rt, job_id)
    scratch.remove_earlier(rt.work_dir, job_id, inputs.attempt)  # a killed attempt could not remove its own
    work = scratch.attempt_dir(rt.work_dir, job_id, inputs.attempt)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        previous = unpack(rt.blobs.path(inputs.parent_uri), work / "previous") if inputs.parent_uri else None
        config = UnlearnConfig.from_dict(inputs.config)  # the device is the worker's: see model_cache
        stats: dict[str, Any] = {}
        with _borrow(rt, inputs.source, stats) as loaded, _teacher(rt, inputs) as teacher:
            _model_event(rt, job_id, stats)
            _check_fingerprint(rt, inputs, loaded.fingerprint)
            result = run_forget(
                loaded,
                inputs.forget,
                inputs.retain,
                inputs.holdout,
                config,
                probes=inputs.probes,
                previous_adapter=previous,
                out_dir=work / "adapter",
                progress=reporter.progress,
                should_cancel=reporter.should_cancel,
                groups=inputs.groups,
                teacher=teacher,
            )
            fingerprint = loaded.fingerprint
        for entry, request_id in zip(result.report["verdict"]["requests"], inputs.request_ids, strict=True):
            entry["request_id"] = request_id  # publication matches each request's verdict by id
        reporter.flush()
        reporter.refresh_flags()
        if reporter.cancel_requested.is_set() or reporter.lost_lease.is_set():  # after the last step
            raise Cancelled("cancelled after the last step")
        if not result.publishes:
            with transaction(rt.sessions) as session:
                conclude(session, job_id, rt.owner, result.outcome, dict(result.report), fingerprint)
            return SUCCEEDED if result.outcome == NOT_MEMORISED else FAILED
        sha, size = pack_dir(Path(result.adapter_dir), work / "adapter.tar.gz")
        uri = rt.blobs.put(work / "adapter.tar.gz", f"adapters/{sha}.tar.gz")
        built = Built(sha, size, uri, dict(result.report), result.outcome, fingerprint)
        with transaction(rt.sessions) as session:
            publish(session, job_id, rt.owner, inputs.parent_id, built)
        return SUCCEEDED
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def _borrow(rt: Runtime, source: str, stats: dict[str, Any]) -> Iterator[Any]:
    """The base model `source` names inside this worker's model roots, from the process's model cache.
    Resolved again at every job (a symlink swapped after registration to point outside a root is refused),
    and the resolved path never reaches a caller: errors name the source as it was registered."""
    try:
        path = str(model_sources.resolve(rt.settings.resolved_model_roots, source).path)
    except model_sources.SourceRefused:
        raise ModelLoadError(
            f"model source {source!r} is not a model directory inside this worker's model roots (UNLEARND_MODEL_ROOTS)"
        ) from None
    try:
        cache = model_cache(rt.settings.model_cache_size)
        with cache.borrow(path, rt.settings.device, stats, devices=rt.settings.worker_devices) as loaded:
            yield loaded
    except ModelLoadError as e:
        raise ModelLoadError(str(e).replace(path, source)) from None


@contextmanager
def _teacher(rt: Runtime, inputs: JobInputs) -> Iterator[Any]:
    """The checkpoint a `restore` job distils (None for other jobs), through the same model cache (a worker
    that restores often wants UNLEARND_MODEL_CACHE_SIZE=2, or it reloads the base model after each such job).
    Its weights must still be the ones registered, like the base model's."""
    if inputs.teacher_source is None:
        yield None
        return
    roots = rt.settings.resolved_model_roots
    try:
        same = (
            model_sources.resolve(roots, inputs.teacher_source).path == model_sources.resolve(roots, inputs.source).path
        )
    except model_sources.SourceRefused:
        same = False  # _borrow names the refused source
    if same:  # one cached model cannot be trained and teach at once (and its entry's lock is held)
        raise InvalidInput("restore_from names a model registered from the same directory as the model itself")
    with _borrow(rt, inputs.teacher_source, {}) as teacher:
        if inputs.teacher_fingerprint is not None and teacher.fingerprint != inputs.teacher_fingerprint:
            raise ModelLoadError(
                f"the weights in {inputs.teacher_source} (restore_from) changed since that model was registered"
            )
        yield teacher


def _model_event(rt: Runtime, job_id: str, stats: dict[str, Any]) -> None:
    how = "taken from the worker's model cache" if stats.get("hit") else "loaded"
    seconds = float(stats.get("load_seconds", 0.0))
    data = {"model_cache": "hit" if stats.get("hit") else "miss", "load_seconds": round(seconds, 4)}
    _in_tx(rt, transitions.add_event, job_id, f"base model {how} in {seconds:.2f} s", data=data)


def _load_inputs(rt: Runtime, job_id: str) -> JobInputs:
    with transaction(rt.sessions) as session:
        job = session.get(Job, job_id)
        model = session.get(BaseModel, job.model_id) if job else None
        if job is None or model is None:
            raise LostLease(job_id)
        forget: list[Record] = []
        groups: list[list[int]] = []  # each request's records, in requests_of order (publication's order too)
        probes: list[Probe] = []
        request_ids: list[str] = []
        for req in transitions.requests_of(session, job_id):
            if req.finished_at is not None:  # cancelled on its own while the job waited: not part of this run
                continue
            request_ids.append(req.id)
            if req.payload is None:
                raise CoreError(f"request {req.id} has no payload left (already purged)")
            payload = decrypt_payload(rt.settings, req.id, req.payload)
            groups.append(list(range(len(forget), len(forget) + len(payload["records"]))))
            forget += [Record.from_dict(r) for r in payload["records"]]
            probes += [Probe.from_dict(p) for p in payload.get("probes", [])]
        parent = active_version(session, job.model_id)
        teacher_id = job.config.get("restore_from")
        teacher = session.get(BaseModel, teacher_id) if teacher_id else None
        if teacher_id and (teacher is None or teacher.tenant_id != model.tenant_id):
            raise InvalidInput(f"restore_from {teacher_id!r}: the model to restore from is no longer registered")
        return JobInputs(
            model_id=model.id,
            source=model.source,
            registered_fingerprint=model.fingerprint,
            config=dict(job.config),
            forget=forget,
            probes=probes,
            groups=groups,
            request_ids=request_ids,
            retain=[Record.from_dict(r) for r in model.retain],
            holdout=[Record.from_dict(r) for r in model.holdout],
            parent_id=parent.id if parent else None,
            parent_uri=parent.storage_uri if parent else None,
            attempt=job.attempts,
            teacher_source=teacher.source if teacher else None,
            teacher_fingerprint=teacher.fingerprint if teacher else None,
        )


def _check_fingerprint(rt: Runtime, inputs: JobInputs, fingerprint: str) -> None:
    """Adapters are tied to the exact base weights: record them on first use, refuse them once changed."""
    if inputs.registered_fingerprint is None:
        with transaction(rt.sessions) as session:
            model = session.get(BaseModel, inputs.model_id)
            if model is not None and model.fingerprint is None:
                model.fingerprint = fingerprint
        return
    if inputs.registered_fingerprint != fingerprint:
        raise ModelLoadError(
            f"the weights in {inputs.source} changed since the model was registered "
            f"(sha256 {fingerprint[:12]}… ≠ {inputs.registered_fingerprint[:12]}…); register it again"
        )


def _stopped(rt: Runtime, job_id: str, reporter: JobReporter) -> str:
    fenced = protocol.owned(job_id, rt.owner)
    if reporter.lost_lease.is_set():
        log.warning("job %s: lease lost to another worker; stopped", job_id)
        return LOST
    if reporter.cancel_requested.is_set() or _cancel_flag(rt, job_id):
        _in_tx(rt, transitions.cancel_done, job_id, fenced, "cancelled by request")
        return CANCELLED
    _in_tx(rt, transitions.release, job_id, fenced, "worker stopping: job returned to the queue", refund=True)
    return RELEASED


def _cancel_flag(rt: Runtime, job_id: str) -> bool:
    with transaction(rt.sessions) as session:
        return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def _crashed(rt: Runtime, job_id: str, error: Exception) -> str:
    fenced = protocol.owned(job_id, rt.owner)
    with transaction(rt.sessions) as session:
        attempts = session.scalar(select(Job.attempts).where(Job.id == job_id)) or 0
        message = f"unexpected error: {type(error).__name__}: {error}"
        if attempts < rt.settings.max_attempts:
            transitions.release(session, job_id, fenced, f"{message}; will retry")
            return RELEASED
        transitions.fail(session, job_id, fenced, "internal_error", f"{message} (after {attempts} attempts)")
        return FAILED


def _in_tx(rt: Runtime, fn: Any, *args: Any, **kwargs: Any) -> Any:
    with transaction(rt.sessions) as session:
        return fn(session, *args, **kwargs)
