"""The job protocol on a migrated database, without a model: claim races, leases, the attempt cap, the
sweeper, cancel, and the fencing of publication."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from unlearnd.api import audit, schemas
from unlearnd.api.db import transaction
from unlearnd.api.models import AdapterVersion, AuditRecord, ForgetRequest, Job, JobEvent, utcnow
from unlearnd.api.security import create_api_key
from unlearnd.worker import protocol, transitions
from unlearnd.worker.publish import Built, LostLease, StaleParent, publish
from unlearnd.worker.runner import NOT_CLAIMED, run_job
from unlearnd.worker.sweeper import sweep_once

from .support import add_model_row


def _submit(rt, tmp_path, n: int = 1) -> list[tuple[str, str]]:
    from unlearnd.api import forget

    with transaction(rt.sessions) as session:
        key, _ = create_api_key(session, rt.settings)
    model_id = add_model_row(rt, str(tmp_path), key.tenant_id)
    out = []
    for i in range(n):
        body = schemas.ForgetRequestIn(
            model_id=model_id, subject={"id": f"s{i}", "legal_basis": "x"}, records=[{"text": f"record {i}"}]
        )
        with rt.sessions() as session:
            req, created = forget.create(session, rt.settings, key, body, None)
            assert created
            job_id = session.scalar(select(Job.id).where(Job.model_id == model_id).order_by(Job.created_at.desc()))
            out.append((req.id, job_id))
    return out


def _claim(rt, job_id: str, owner: str, now=None) -> bool:
    with transaction(rt.sessions) as session:
        return protocol.claim(session, job_id, owner, now or utcnow(), rt.settings.lease_seconds, 3)


def _job(rt, job_id: str) -> Job:
    with rt.sessions() as session:
        return session.get(Job, job_id)


def test_concurrent_claims_have_exactly_one_winner(rt, tmp_path):
    [(_, job_id)] = _submit(rt, tmp_path)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def contend(i: int) -> None:
        barrier.wait()
        results.append(_claim(rt, job_id, f"w{i}"))

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    job = _job(rt, job_id)
    assert job.status == "running" and job.attempts == 1 and job.lease_owner.startswith("w")


def test_an_expired_lease_can_be_claimed_again_and_fences_the_old_owner(rt, tmp_path):
    [(_, job_id)] = _submit(rt, tmp_path)
    assert _claim(rt, job_id, "old")
    assert not _claim(rt, job_id, "new")  # lease still live
    later = utcnow() + timedelta(seconds=rt.settings.lease_seconds + 1)
    assert _claim(rt, job_id, "new", now=later)
    job = _job(rt, job_id)
    assert job.lease_owner == "new" and job.attempts == 2
    with transaction(rt.sessions) as session:
        assert not protocol.renew(session, job_id, "old", utcnow(), 10)
        assert protocol.renew(session, job_id, "new", utcnow(), 10)
        built = Built("0" * 64, 1, "local:x", {"adapter": {"rank": 1}}, "forgotten", None)
        with pytest.raises(LostLease):
            publish(session, job_id, "old", None, built)


def test_publication_is_exactly_once_and_cumulative(rt, tmp_path):
    (req1, job1), (req2, job2) = _submit(rt, tmp_path, n=2)
    built = Built("a" * 64, 10, "local:adapters/a.tar.gz", {"adapter": {"rank": 4, "alpha": 8}}, "forgotten", "f" * 64)
    assert _claim(rt, job1, "w")
    with transaction(rt.sessions) as session:
        v1 = publish(session, job1, "w", None, built)
    with pytest.raises(LostLease), transaction(rt.sessions) as session:  # the same job, published again
        publish(session, job1, "w", None, built)
    # job 2 waited for job 1 (same model); it started from no version, so publishing must be refused
    assert _claim(rt, job2, "w2")
    with pytest.raises(StaleParent), transaction(rt.sessions) as session:
        publish(session, job2, "w2", None, built)
    with transaction(rt.sessions) as session:
        v2 = publish(session, job2, "w2", v1.id, Built("b" * 64, 10, "local:b", {"adapter": {}}, "unverified", None))
    with rt.sessions() as session:
        versions = session.scalars(select(AdapterVersion).order_by(AdapterVersion.version)).all()
        assert [(v.version, v.status, v.parent_id) for v in versions] == [
            (1, "superseded", None),
            (2, "active", v1.id),
        ]
        audits = session.scalars(select(AuditRecord).order_by(AuditRecord.seq)).all()
        assert [(a.request_id, a.verdict) for a in audits] == [(req1, "forgotten"), (req2, "unverified")]
        assert audits[1].adapter_version_id == v2.id
        reqs = session.scalars(select(ForgetRequest)).all()
        assert all(r.status == "succeeded" and r.payload is None and r.payload_purged_at for r in reqs)


def test_jobs_of_one_model_run_one_at_a_time(rt, tmp_path):
    (_, job1), (_, job2) = _submit(rt, tmp_path, n=2)
    assert _claim(rt, job1, "w1")
    assert not _claim(rt, job2, "w2")
    assert _job(rt, job2).status == "queued" and _job(rt, job2).attempts == 0


def test_attempt_cap_fails_the_job_with_a_clear_error(rt, tmp_path):
    [(req_id, job_id)] = _submit(rt, tmp_path)
    with transaction(rt.sessions) as session:  # three workers died mid-job
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status="running",
                attempts=3,
                lease_owner="dead",
                lease_expires_at=utcnow() - timedelta(seconds=1),
            )
        )
    assert run_job(job_id, rt) == NOT_CLAIMED
    job = _job(rt, job_id)
    assert job.status == "failed" and job.error_code == "attempts_exhausted"
    assert "gave up after 3 attempts" in job.error
    with rt.sessions() as session:
        assert session.scalar(select(AuditRecord.verdict).where(AuditRecord.request_id == req_id)) == "failed"


def test_sweeper_redispatches_lost_jobs_and_fails_exhausted_ones(rt, tmp_path):
    (_, queued), (_, expired), (_, live_job), (_, exhausted) = _submit(rt, tmp_path, n=4)
    past = utcnow() - timedelta(seconds=5)
    with transaction(rt.sessions) as session:
        session.execute(
            update(Job).where(Job.id == expired).values(status="running", attempts=1, lease_expires_at=past)
        )
        session.execute(
            update(Job)
            .where(Job.id == live_job)
            .values(status="running", attempts=1, lease_expires_at=utcnow() + timedelta(minutes=5))
        )
        session.execute(
            update(Job).where(Job.id == exhausted).values(status="running", attempts=3, lease_expires_at=past)
        )
    dispatched: list[str] = []
    # Just submitted: the queued job's message is presumed alive until redispatch_after has passed.
    assert sweep_once(rt, dispatched.append) == [expired]
    dispatched.clear()
    sweep_once(rt, dispatched.append, queued_before=utcnow())
    assert set(dispatched) == {queued, expired}
    assert _job(rt, exhausted).status == "failed"
    assert _job(rt, live_job).status == "running"


def test_cancel_queued_is_immediate_and_running_is_flagged(rt, tmp_path):
    (req1, job1), (_, job2) = _submit(rt, tmp_path, n=2)
    with transaction(rt.sessions) as session:
        assert transitions.request_cancel(session, session.get(Job, job1)) == "cancelled"
    assert run_job(job1, rt) == NOT_CLAIMED  # a cancelled job is never claimed
    assert _claim(rt, job2, "w")
    with transaction(rt.sessions) as session:
        assert transitions.request_cancel(session, session.get(Job, job2)) == "cancelling"
    job = _job(rt, job2)
    assert job.status == "cancelling" and job.cancel_requested
    with rt.sessions() as session:
        req = session.get(ForgetRequest, req1)
        assert req.status == "cancelled" and req.payload is None
        messages = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job2)).all()
        assert any("cancel requested" in m for m in messages)


def test_submission_commits_request_and_job_together(rt, tmp_path):
    [(req_id, job_id)] = _submit(rt, tmp_path)
    with rt.sessions() as session:
        req = session.get(ForgetRequest, req_id)
        assert req.payload and b"record 0" not in req.payload  # encrypted at rest
        assert len(req.record_hashes) == 1 and req.subject_hash != "s0"
        assert session.scalar(select(func.count()).select_from(Job)) == 1
        from unlearnd.api.crypto import decrypt_payload

        assert decrypt_payload(rt.settings, req_id, req.payload)["records"] == [{"text": "record 0"}]
        with pytest.raises(Exception):  # noqa: B017 - bound to its request id
            decrypt_payload(rt.settings, "req_other", req.payload)


def test_every_final_outcome_is_an_audit_record_cancelled_ones_too(rt, tmp_path):
    """Cancelled while queued (the API's cancel) and cancelled while running (the worker stops at its next
    step): each request gets a `cancelled` audit record in the chain, as it loses its payload."""
    (queued_req, queued_job), (running_req, running_job) = _submit(rt, tmp_path, n=2)
    with transaction(rt.sessions) as session:
        assert transitions.request_cancel(session, session.get(Job, queued_job)) == "cancelled"
    assert _claim(rt, running_job, "w")
    with transaction(rt.sessions) as session:
        assert transitions.request_cancel(session, session.get(Job, running_job)) == "cancelling"
    with transaction(rt.sessions) as session:  # what run_job does when it sees the flag
        assert transitions.cancel_done(session, running_job, protocol.owned(running_job, "w"), "cancelled by request")
    with rt.sessions() as session:
        for req_id, job_id in ((queued_req, queued_job), (running_req, running_job)):
            record = session.scalar(select(AuditRecord).where(AuditRecord.request_id == req_id))
            assert record is not None, "a cancelled request left no audit record"
            assert record.verdict == "cancelled" and record.job_id == job_id and record.adapter_version_id is None
            assert session.get(ForgetRequest, req_id).payload is None
        result = audit.verify_chain(session)
    assert result["ok"] and result["checked"] == 2


def test_scratch_directories_of_attempts_that_cannot_run_are_removed(rt, tmp_path):
    """A killed attempt leaves `<work>/<job>-<attempt>` (adapter weights) behind: the sweeper removes those of
    finished or unknown jobs and of superseded attempts, a new attempt those of the job's earlier ones."""
    from datetime import timedelta

    from unlearnd.worker import scratch

    (_, done), (_, rerun), (_, dead) = _submit(rt, tmp_path, n=3)
    with transaction(rt.sessions) as session:
        transitions.request_cancel(session, session.get(Job, done))
    past = utcnow() - timedelta(hours=1)
    assert _claim(rt, dead, "killed", now=past - timedelta(hours=1))  # attempt 1 killed, not yet claimed again
    assert _claim(rt, rerun, "killed", now=past) and _claim(rt, rerun, "alive")  # attempt 1 killed, 2 runs
    names = [f"{done}-1", f"{rerun}-1", f"{rerun}-2", f"{dead}-1", "job_0000-1", "not-an-attempt"]
    for name in names:
        (rt.work_dir / name / "adapter").mkdir(parents=True)
        (rt.work_dir / name / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    sweep_once(rt, lambda job_id: None)
    left = sorted(p.name for p in rt.work_dir.iterdir())
    assert left == sorted([f"{rerun}-2", f"{dead}-1", "not-an-attempt"])
    assert scratch.remove_earlier(rt.work_dir, dead, 2) == [rt.work_dir / f"{dead}-1"]  # its next attempt
    assert sorted(p.name for p in rt.work_dir.iterdir()) == sorted([f"{rerun}-2", "not-an-attempt"])


def test_a_source_outside_the_workers_model_roots_fails_the_job(rt, tmp_path):
    """The worker resolves the stored source against its own UNLEARND_MODEL_ROOTS at every job: a model row
    whose source is not inside them (a legacy absolute path, a symlink swapped after registration) fails
    with a clear error instead of loading whatever the path now names."""
    from unlearnd.worker.runner import FAILED

    [(req_id, job_id)] = _submit(rt, tmp_path)  # source: the test's tmp dir, not inside a model root
    assert run_job(job_id, rt) == FAILED
    job = _job(rt, job_id)
    assert job.error_code == "model_load_failed" and "model roots (UNLEARND_MODEL_ROOTS)" in job.error
    with rt.sessions() as session:
        assert session.scalar(select(AuditRecord.verdict).where(AuditRecord.request_id == req_id)) == "failed"
