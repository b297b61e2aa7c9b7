"""Workers die; nothing is lost or duplicated: a worker SIGKILLed mid-unlearning (a new worker finishes the
job, once) and a job that kills its worker every time (it fails at the attempt cap instead of looping)."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from unlearnd.api.models import AdapterVersion, AuditRecord
from unlearnd.worker.runtime import Runtime

from .support import LONG, TINY, Api, Broker, WorkerProcess, make_settings, register_model, start_api, submit

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def api(tmp_path_factory, pg_url: str, broker: Broker) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("faults")
    a = start_api(make_settings(root / "data", pg_url, broker))
    yield a
    a.stop()


@pytest.fixture(scope="module")
def db(api: Api) -> Iterator[Runtime]:
    rt = Runtime.build(api.settings)
    yield rt
    rt.close()


def _count(db: Runtime, model, column, value) -> int:
    with db.sessions() as session:
        return session.scalar(select(func.count()).select_from(model).where(column == value))


def test_worker_killed_mid_unlearning_is_completed_once_by_a_new_worker(api: Api, db: Runtime, tiny_world, tmp_path):
    model_id = register_model(api, tiny_world, "killed", retain=False)
    first = WorkerProcess(api.settings, tmp_path / "first.log").start()
    try:
        req = submit(api, model_id, [r.to_dict() for r in tiny_world.forget[:2]], LONG, subject="killed")
        api.wait_step(req["job_id"], step=1)
    finally:
        first.kill()  # SIGKILL: no ack, no release; the lease runs out
    assert api.job(req["job_id"])["status"] == "running"
    work = api.settings.data_dir.resolve() / "work"
    assert (work / f"{req['job_id']}-1").is_dir()  # the killed attempt's scratch space, left behind

    second = WorkerProcess(api.settings, tmp_path / "second.log").start()
    try:
        final = api.wait(req["id"])
    finally:
        second.stop()
    assert final["status"] == "succeeded", final
    job = api.job(req["job_id"])
    assert job["attempts"] == 2
    assert _count(db, AdapterVersion, AdapterVersion.job_id, req["job_id"]) == 1
    assert _count(db, AuditRecord, AuditRecord.request_id, req["id"]) == 1
    started = [e for e in api.events(req["job_id"]) if e["message"].startswith("attempt ")]
    assert [e["message"] for e in started] == ["attempt 1 of 3 started", "attempt 2 of 3 started"]
    assert str(first.proc.pid) in started[0]["data"]["worker"]
    assert str(second.proc.pid) in started[1]["data"]["worker"]
    assert not list(work.glob(f"{req['job_id']}-*"))  # the new attempt removed it (and its own)


def test_job_that_always_crashes_its_worker_fails_at_the_attempt_cap(api: Api, db: Runtime, tiny_world, tmp_path):
    """Prefork pool here: the pool process dies with SIGKILL at every attempt, the parent forks a new one and
    its sweeper re-dispatches the job when the lease expires, until the cap fails it for good."""
    source = shutil.copytree(tiny_world.model_dir, api.settings.resolved_model_roots[0] / "crash-me")
    model_id = register_model(api, tiny_world, "crasher", retain=False, source=source)
    extra = ["--pool", "prefork", "-I", "tests.integration.crash_plugin"]
    worker = WorkerProcess(api.settings, tmp_path / "crash.log", extra_args=extra).start()
    try:
        req = submit(api, model_id, [r.to_dict() for r in tiny_world.forget[:1]], TINY, subject="crasher")
        final = api.wait(req["id"], timeout=180)
        assert worker.alive()  # the pool process died each time, the worker did not
    finally:
        worker.stop()
    assert final["status"] == "failed"
    job = api.job(req["job_id"])
    assert job["error_code"] == "attempts_exhausted" and job["attempts"] == 3
    assert "gave up after 3 attempts" in job["error"]
    messages = [e["message"] for e in api.events(req["job_id"])]
    assert [m for m in messages if m.startswith("attempt ")] == [f"attempt {i} of 3 started" for i in (1, 2, 3)]
    assert _count(db, AdapterVersion, AdapterVersion.model_id, model_id) == 0
    with db.sessions() as session:
        verdicts = session.scalars(select(AuditRecord.verdict).where(AuditRecord.request_id == req["id"])).all()
    assert verdicts == ["failed"]


def test_warm_shutdown_returns_the_running_job_to_the_queue(api: Api, db: Runtime, tiny_world, tmp_path):
    """SIGTERM (docker stop): the job stops at its next step, goes back to the queue with its attempt refunded,
    and the worker exits without waiting for the job's end; the next worker runs it."""
    model_id = register_model(api, tiny_world, "warm", retain=False)
    first = WorkerProcess(api.settings, tmp_path / "first.log").start()
    req = submit(api, model_id, [r.to_dict() for r in tiny_world.forget[:2]], LONG, subject="warm")
    api.wait_step(req["job_id"], step=1)
    first.proc.send_signal(signal.SIGTERM)
    first.proc.wait(timeout=60)
    job = api.job(req["job_id"])
    assert job["status"] == "queued" and job["attempts"] == 0, job
    assert job["progress"]["step"] < LONG["max_steps"]

    second = WorkerProcess(api.settings, tmp_path / "second.log").start()
    try:
        final = api.wait(req["id"])
    finally:
        second.stop()
    assert final["status"] == "succeeded"
    assert api.job(req["job_id"])["attempts"] == 1  # a stop is no failure
    messages = [e["message"] for e in api.events(req["job_id"])]
    assert [m for m in messages if m.startswith("attempt ")] == ["attempt 1 of 3 started"] * 2
    assert any("returned to the queue" in m for m in messages)
    assert _count(db, AdapterVersion, AdapterVersion.job_id, req["job_id"]) == 1


@pytest.fixture(scope="module")
def batching_api(tmp_path_factory, pg_url: str, broker: Broker) -> Iterator[Api]:
    """A service that coalesces: requests waiting for a model's next job are served by it, up to 8."""
    root = tmp_path_factory.mktemp("batch")
    a = start_api(make_settings(root / "data", pg_url, broker, max_requests_per_job=8))
    yield a
    a.stop()


def test_worker_killed_mid_batch_finishes_every_request_once(batching_api: Api, tiny_world, tmp_path):
    """Three requests queued before any worker runs share one job; the worker is SIGKILLed mid-unlearning;
    a new worker finishes the job: each request succeeded once, with its own audit, one version for all."""
    api = batching_api
    model_id = register_model(api, tiny_world, "batch-killed", retain=False)
    people = tiny_world.forget
    reqs = [
        submit(api, model_id, [people[2 * i].to_dict(), people[2 * i + 1].to_dict()], LONG, subject=f"batch-{i}")
        for i in range(3)
    ]
    assert len({r["job_id"] for r in reqs}) == 1  # coalesced: one queued job serves all three
    job_id = reqs[0]["job_id"]
    first = WorkerProcess(api.settings, tmp_path / "first.log").start()
    try:
        api.wait_step(job_id, step=1)
    finally:
        first.kill()
    second = WorkerProcess(api.settings, tmp_path / "second.log").start()
    try:
        finals = [api.wait(r["id"]) for r in reqs]
    finally:
        second.stop()
    assert [f["status"] for f in finals] == ["succeeded"] * 3, finals
    assert api.job(job_id)["attempts"] == 2
    rt = Runtime.build(api.settings)
    try:
        assert _count(rt, AdapterVersion, AdapterVersion.job_id, job_id) == 1
        for r in reqs:
            assert _count(rt, AuditRecord, AuditRecord.request_id, r["id"]) == 1
        with rt.sessions() as session:
            audits = session.scalars(select(AuditRecord).where(AuditRecord.job_id == job_id)).all()
            assert sorted(len(a.record_hashes) for a in audits) == [2, 2, 2]  # each request's own records
            assert len({a.adapter_version_id for a in audits}) == 1
    finally:
        rt.close()
