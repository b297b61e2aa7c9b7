"""Coalescing (DESIGN §2, issue "A stream of erasure requests"): requests of one model that wait for its next job
are served by that job, up to a bound; each keeps its own verdict, audit and status; cancelling one leaves the
others in the batch. On a migrated SQLite database, without a model (publication is given a report)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from unlearnd.api import forget, schemas
from unlearnd.api.db import transaction, upgrade_to_head
from unlearnd.api.models import AuditRecord, ForgetRequest, Job, JobRequest, utcnow
from unlearnd.api.security import create_api_key
from unlearnd.worker import protocol, transitions
from unlearnd.worker.publish import Built, publish
from unlearnd.worker.runtime import Runtime

from .support import add_model_row, make_settings


@pytest.fixture
def rt(tmp_path) -> Iterator[Runtime]:
    settings = make_settings(tmp_path / "data", max_requests_per_job=3)
    upgrade_to_head(settings)
    runtime = Runtime.build(settings)
    yield runtime
    runtime.close()


@pytest.fixture
def model(rt, tmp_path):
    with transaction(rt.sessions) as session:
        key, _ = create_api_key(session, rt.settings)
    return key, add_model_row(rt, str(tmp_path), key.tenant_id)


def _submit(rt, key, model_id: str, subject: str, config: dict | None = None) -> tuple[str, str]:
    body = schemas.ForgetRequestIn(
        model_id=model_id,
        subject={"id": subject, "legal_basis": "x"},
        records=[{"text": f"the record of {subject}"}],
        method="ihl",
        config=schemas.ConfigIn(**(config or {})),
    )
    with rt.sessions() as session:
        req, _ = forget.create(session, rt.settings, key, body, None)
        job_id = session.scalar(select(JobRequest.job_id).where(JobRequest.request_id == req.id))
        return req.id, job_id


def _claim(rt, job_id: str) -> bool:
    with transaction(rt.sessions) as session:
        return protocol.claim(session, job_id, "w", utcnow(), rt.settings.lease_seconds, 3)


def test_waiting_requests_join_the_models_queued_job_up_to_the_bound(rt, model):
    key, model_id = model
    a, b, c, d = (_submit(rt, key, model_id, s) for s in "abcd")
    assert a[1] == b[1] == c[1] and d[1] != a[1]  # the bound is 3: the fourth waits in a job of its own
    other = _submit(rt, key, model_id, "e", {"max_steps": 5})
    assert other[1] not in (a[1], d[1])  # another config, another job
    assert _claim(rt, d[1]) or _claim(rt, a[1])  # one of the model's jobs runs (a claim serialises a model)
    running = a[1] if _job(rt, a[1]).status == "running" else d[1]
    late = _submit(rt, key, model_id, "f")
    assert late[1] != running  # a running job takes no one: the request waits in a queued job


def _job(rt, job_id: str) -> Job:
    with rt.sessions() as session:
        return session.get(Job, job_id)


def test_a_request_cancelled_while_queued_leaves_the_batch_and_the_others_go_on(rt, model):
    key, model_id = model
    (a, job), (b, job_b) = _submit(rt, key, model_id, "a"), _submit(rt, key, model_id, "b")
    assert job == job_b
    with transaction(rt.sessions) as session:
        req = session.get(ForgetRequest, b)
        assert transitions.cancel_one(session, req, session.get(Job, job)) == "cancelled"
    with rt.sessions() as session:
        assert session.get(Job, job).status == "queued"  # the job waits on for request a
        assert session.get(ForgetRequest, a).status == "queued"
        b_req = session.get(ForgetRequest, b)
        assert b_req.status == "cancelled" and b_req.payload is None and b_req.payload_purged_at is not None
        assert session.scalar(select(AuditRecord.verdict).where(AuditRecord.request_id == b)) == "cancelled"
    # publication serves a alone: one audit for it, none more for b
    assert _claim(rt, job)
    report = {"verdict": {"outcome": "forgotten", "requests": [{"request_id": a, "outcome": "forgotten"}]}}
    with transaction(rt.sessions) as session:
        publish(
            session,
            job,
            "w",
            None,
            Built("a" * 64, 1, "local:x", {**report, "adapter": {"rank": 8}}, "forgotten", None),
        )
    with rt.sessions() as session:
        verdicts = dict(session.execute(select(AuditRecord.request_id, AuditRecord.verdict)).all())
        assert verdicts == {a: "forgotten", b: "cancelled"}
        assert session.get(ForgetRequest, a).status == "succeeded"
        assert session.get(ForgetRequest, b).status == "cancelled"


def test_each_request_of_a_published_batch_gets_its_own_verdict_status_and_version_link(rt, model):
    key, model_id = model
    (a, job), (b, _), (c, _) = (_submit(rt, key, model_id, s) for s in "abc")
    assert _claim(rt, job)
    requests = [
        {"request_id": a, "outcome": "forgotten", "records": 1},
        {"request_id": b, "outcome": "not_reached", "records": 1, "after": {"failed": ["loss_auc"]}},
        {"request_id": c, "outcome": "not_memorised", "records": 1},
    ]
    report = {"verdict": {"outcome": "not_reached", "requests": requests}, "adapter": {"rank": 8}}
    with transaction(rt.sessions) as session:
        version = publish(session, job, "w", None, Built("b" * 64, 1, "local:y", report, "not_reached", None))
        version_id = version.id
    with rt.sessions() as session:
        audits = {x.request_id: x for x in session.scalars(select(AuditRecord))}
        assert {r: x.verdict for r, x in audits.items()} == {a: "forgotten", b: "not_reached", c: "not_memorised"}
        assert audits[a].adapter_version_id == version_id and audits[a].adapter_sha256 == "b" * 64
        assert audits[b].adapter_version_id is None and "loss_auc" in audits[b].error  # nothing certified for b
        assert audits[c].adapter_version_id is None  # the model never knew c's records
        assert audits[b].metrics["verdict"]["outcome"] == "not_reached"
        statuses = {r.id: r.status for r in session.scalars(select(ForgetRequest))}
        assert statuses == {a: "succeeded", b: "failed", c: "succeeded"}
