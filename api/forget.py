"""Creating a forget request: validate, resolve the config, encrypt the payload, and commit the request
with its job in one transaction (DESIGN §2) — dispatching happens only after the commit."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from unlearnd.api import limits, schemas, security
from unlearnd.api.chat import check_chat_records
from unlearnd.api.crypto import encrypt_payload
from unlearnd.api.errors import HoldoutRequired, InvalidConfig, InvalidRestoreFrom, NotFound
from unlearnd.api.models import QUEUED, ApiKey, BaseModel, ForgetRequest, Job, JobRequest, new_id, utcnow
from unlearnd.api.settings import Settings
from unlearnd.core.config import ADAPTER_INITS, MIN_HOLDOUT, NEEDS_HOLDOUT, UnlearnConfig
from unlearnd.core.errors import InvalidInput


def resolve_config(model: BaseModel, body: schemas.ForgetRequestIn, max_adapter_rank: int) -> dict:
    """core defaults ← the model's defaults ← the request's method/init/config, the service's rank cap
    (`max_adapter_rank` wins over a larger one asked for), validated by core itself.

    The default method (`ctd`) calibrates against the model's holdout set; for a model registered without one
    (nothing can be verified there anyway: its requests end `unverified`) the default is `ihl`, which needs
    none. A request or model that names `ctd` explicitly without a holdout is refused (HoldoutRequired)."""
    merged = dict(model.default_config)
    if "method" not in merged and not body.method and model.holdout_count < MIN_HOLDOUT:
        merged["method"] = "ihl"
    if body.method:
        merged["method"] = body.method
    if body.restore_from:
        merged["restore_from"] = body.restore_from
        merged["method"] = body.method or "restore"
    if body.init:
        merged["init"] = body.init
    if body.config:
        merged.update(body.config.overrides())
    try:
        config = UnlearnConfig.from_dict(merged)
        if config.max_adapter_rank > max_adapter_rank:  # capped before validating: the cap bounds the job's rank too
            config.max_adapter_rank = max_adapter_rank
            config.validate()
    except InvalidInput as e:
        raise InvalidConfig(str(e)) from None
    if config.init not in ADAPTER_INITS:
        raise InvalidConfig(f"init {config.init!r} does not produce an adapter; choose one of {ADAPTER_INITS}")
    return config.to_dict()


def create(
    session: Session,
    settings: Settings,
    caller: ApiKey,
    body: schemas.ForgetRequestIn,
    idempotency_key: str | None,
) -> tuple[ForgetRequest, bool]:
    """Return (request, created). Records and probes are encrypted (bound to the request id) before anything
    is stored, the subject id only as its keyed hash. Retries with an Idempotency-Key are answered by
    api/idempotency.py before this runs, so `created` is always true (kept for callers of the old API)."""
    limits.check_forget_request(settings, body)
    model = session.get(BaseModel, body.model_id)
    if model is None or model.tenant_id != caller.tenant_id:
        raise NotFound("model not found", details={"resource": "model"})
    config = resolve_config(model, body, settings.max_adapter_rank)
    if config["restore_from"] is not None:
        teacher = session.get(BaseModel, config["restore_from"])
        if teacher is None or teacher.tenant_id != caller.tenant_id or teacher.source == model.source:
            raise InvalidRestoreFrom(
                "restore_from must name another registered model of yours, from another directory: the "
                "checkpoint from before the corrupting data",
                details={"restore_from": config["restore_from"]},
            )
    if config["method"] in NEEDS_HOLDOUT and model.holdout_count < MIN_HOLDOUT:
        raise HoldoutRequired(
            f"method {config['method']!r} calibrates against the model's holdout set (records it never saw), "
            f"which needs at least {MIN_HOLDOUT} records; register them with the model or choose another method",
            details={"holdout_count": model.holdout_count, "required": MIN_HOLDOUT},
        )
    records = [r.to_record() for r in body.records]
    check_chat_records(settings, model.source, records)
    salt = security.new_salt()
    req_id = new_id("req")
    payload = {"records": [r.to_dict() for r in records], "probes": [p.model_dump() for p in body.probes]}
    now = utcnow()
    req = ForgetRequest(
        id=req_id,
        tenant_id=caller.tenant_id,
        model_id=model.id,
        subject_hash=security.subject_hash(settings, body.subject.id),
        legal_basis=body.subject.legal_basis,
        ticket=body.subject.ticket,
        idempotency_key=idempotency_key,
        payload=encrypt_payload(settings, req_id, payload),
        record_salt=salt,
        record_hashes=[security.record_hash(salt, r) for r in records],
        record_count=len(records),
        probe_count=len(body.probes),
        config=config,
        created_at=now,
    )
    job = waiting_job(session, model.id, config, settings.max_requests_per_job)
    if job is None:
        job = Job(tenant_id=caller.tenant_id, model_id=model.id, config=config, created_at=now, dispatched_at=now)
        session.add(job)
    session.add(req)
    session.flush()
    session.add(JobRequest(job_id=job.id, request_id=req.id))
    session.commit()
    return req, True


def waiting_job(session: Session, model_id: str, config: dict, limit: int) -> Job | None:
    """A queued job of this model with the same config and room for one more request: the request joins it
    (coalescing, DESIGN §2) instead of queueing a job of its own behind it. On PostgreSQL the *model's* row is
    locked first — the lock a worker's claim and publication take too, in the same order, so submissions and
    claims of one model queue on it instead of deadlocking on each other's job rows: a claim either committed
    before (the job is no longer queued) or runs after this request is in the job. SQLite's write transaction
    serialises the same."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(BaseModel.id).where(BaseModel.id == model_id).with_for_update())
    query = (
        select(Job)
        .where(Job.model_id == model_id, Job.status == QUEUED, Job.cancel_requested.is_(False))
        .order_by(Job.created_at)
    )
    for job in session.scalars(query):
        size = session.scalar(select(func.count()).select_from(JobRequest).where(JobRequest.job_id == job.id)) or 0
        if job.config == config and size < limit:
            return job
    return None
