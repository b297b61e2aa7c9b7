"""PostgreSQL (psycopg 3): the migrations, the claim under concurrent workers, and the broker-mode sweeper.
No worker process here: these are the protocol's SQL on the real database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text, update

from unlearnd.api.db import alembic_config, make_engine, transaction, upgrade_to_head
from unlearnd.api.models import Base, BaseModel, Job, utcnow
from unlearnd.api.security import ensure_tenant
from unlearnd.api.settings import Settings
from unlearnd.worker import protocol
from unlearnd.worker.runner import _serialise_claims_of_model
from unlearnd.worker.runtime import Runtime
from unlearnd.worker.sweeper import sweep_once

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(pg_url: str, tmp_path_factory) -> Settings:
    assert pg_url.startswith("postgresql+psycopg://")
    s = Settings(data_dir=tmp_path_factory.mktemp("pg"), database_url=pg_url, redispatch_after_seconds=60)
    upgrade_to_head(s)
    return s


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime.build(settings)
    with transaction(runtime.sessions) as session:  # each test starts from no jobs
        session.execute(text("TRUNCATE jobs CASCADE"))
    yield runtime
    runtime.close()


def test_migrations_on_a_fresh_postgres_database_match_the_models(settings: Settings):
    engine = make_engine(settings.resolved_database_url)
    try:
        assert engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()


def test_downgrade_and_upgrade_again_on_postgres(pg_url: str):
    from .support import create_database, drop_database

    name = f"{pg_url.rsplit('/', 1)[1]}_updown"
    url = create_database(name)
    try:
        cfg = alembic_config(url)
        command.upgrade(cfg, "head")
        command.downgrade(cfg, "base")
        engine = make_engine(url)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        command.upgrade(cfg, "head")
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        engine.dispose()
    finally:
        drop_database(name)


def _jobs(rt: Runtime, n: int, *, models: int = 1) -> list[str]:
    now = utcnow()
    with transaction(rt.sessions) as session:
        tenant = ensure_tenant(session)
        model_ids = []
        for _ in range(models):
            model = BaseModel(tenant_id=tenant.id, name=f"m-{time.monotonic_ns()}", source="/nowhere")
            session.add(model)
            session.flush()
            model_ids.append(model.id)
        jobs = [
            Job(tenant_id=tenant.id, model_id=model_ids[i % models], config={}, created_at=now, dispatched_at=now)
            for i in range(n)
        ]
        session.add_all(jobs)
        session.flush()
        return [j.id for j in jobs]


def _claim(rt: Runtime, job_id: str, owner: str) -> bool:
    """The worker's claim transaction (runner.run_job): model lock on PostgreSQL, then the conditional UPDATE."""
    with transaction(rt.sessions) as session:
        _serialise_claims_of_model(session, job_id)
        return protocol.claim(session, job_id, owner, utcnow(), 60, 3)


def _race(fn, args: list[tuple]) -> list:
    barrier = threading.Barrier(len(args))
    results: list = [None] * len(args)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = fn(*args[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_claims_of_one_job_have_exactly_one_winner(rt: Runtime):
    [job_id] = _jobs(rt, 1)
    for _ in range(3):
        results = _race(lambda owner: _claim(rt, job_id, owner), [(f"w{i}",) for i in range(8)])
        assert results.count(True) <= 1
        if True in results:
            break
    assert results.count(True) == 1
    with rt.sessions() as session:
        job = session.get(Job, job_id)
        assert job.status == "running" and job.attempts == 1 and job.lease_owner == f"w{results.index(True)}"


def test_concurrent_claims_of_one_models_jobs_have_exactly_one_winner(rt: Runtime):
    """Versions are cumulative, so one model's jobs run one at a time, even when 8 workers claim 8 of its jobs
    at the same moment (READ COMMITTED alone would let several see the model free)."""
    job_ids = _jobs(rt, 8)
    results = _race(lambda job_id, owner: _claim(rt, job_id, owner), [(j, f"w{i}") for i, j in enumerate(job_ids)])
    assert results.count(True) == 1
    with rt.sessions() as session:
        running = session.scalars(select(Job.id).where(Job.status == "running")).all()
    assert running == [job_ids[results.index(True)]]


def test_a_claim_waits_for_a_concurrent_claim_of_the_same_model(rt: Runtime):
    first, second = _jobs(rt, 2)
    outcome: list[bool] = []
    session = rt.sessions()
    session.begin()
    _serialise_claims_of_model(session, first)
    assert protocol.claim(session, first, "a", utcnow(), 60, 3)  # not committed yet
    t = threading.Thread(target=lambda: outcome.append(_claim(rt, second, "b")))
    t.start()
    time.sleep(0.5)
    assert t.is_alive() and outcome == []  # blocked on the model's row lock
    session.commit()
    session.close()
    t.join(30)
    assert outcome == [False]  # then it sees the committed lease: the model is busy


def test_claims_of_different_models_do_not_wait_for_each_other(rt: Runtime):
    job_ids = _jobs(rt, 4, models=4)
    results = _race(lambda job_id, owner: _claim(rt, job_id, owner), [(j, f"w{i}") for i, j in enumerate(job_ids)])
    assert results == [True] * 4


class FakeBroker:
    def __init__(self, live: set[str] | None) -> None:
        self.live = live
        self.reads = 0

    def live_ids(self) -> set[str] | None:
        self.reads += 1
        return self.live


def _set(rt: Runtime, job_id: str, **values) -> None:
    with transaction(rt.sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def test_broker_sweeper_skips_jobs_whose_message_waits_in_the_queue(rt: Runtime):
    in_queue, lost = _jobs(rt, 2, models=2)
    old = utcnow() - timedelta(minutes=10)
    _set(rt, in_queue, dispatched_at=old)
    _set(rt, lost, dispatched_at=old)
    sent: list[str] = []
    assert sweep_once(rt, sent.append, broker=FakeBroker({in_queue})) == [lost]
    assert sent == [lost]
    assert sweep_once(rt, sent.append, broker=FakeBroker({in_queue})) == []  # just dispatched: not again


def test_broker_sweeper_redispatches_an_expired_lease_once_per_expiry(rt: Runtime):
    [job_id] = _jobs(rt, 1)
    now = utcnow()
    dispatched = now - timedelta(seconds=10)  # dispatched, claimed, then its worker died
    _set(rt, job_id, status="running", attempts=1, lease_owner="dead", lease_expires_at=now, dispatched_at=dispatched)
    broker = FakeBroker(set())
    assert sweep_once(rt, lambda _j: None, broker=broker) == [job_id]
    assert sweep_once(rt, lambda _j: None, broker=broker) == []  # its new message may wait behind other jobs
    # Claimed again by a worker that died too: the new expiry is re-dispatched again.
    _set(rt, job_id, attempts=2, lease_owner="dead2", lease_expires_at=utcnow())
    assert sweep_once(rt, lambda _j: None, broker=broker) == [job_id]


def test_broker_sweeper_leaves_jobs_of_a_busy_model_and_respects_the_cap(rt: Runtime):
    running, waiting, exhausted = _jobs(rt, 3)
    now = utcnow()
    _set(rt, running, status="running", attempts=1, lease_owner="w", lease_expires_at=now + timedelta(minutes=5))
    _set(rt, waiting, dispatched_at=None)  # its message was consumed by a claim that lost to `running`
    _set(rt, exhausted, status="running", attempts=3, lease_owner="dead", lease_expires_at=now - timedelta(seconds=1))
    broker = FakeBroker(set())
    assert sweep_once(rt, lambda _j: None, broker=broker) == []
    with rt.sessions() as session:
        assert session.get(Job, exhausted).status == "failed"
    _set(rt, running, status="succeeded", lease_owner=None, lease_expires_at=None)
    assert sweep_once(rt, lambda _j: None, broker=broker) == [waiting]


def test_one_sweeper_at_a_time_on_postgres(rt: Runtime):
    [job_id] = _jobs(rt, 1)
    _set(rt, job_id, dispatched_at=None)
    with transaction(rt.sessions) as other:  # another worker's sweeper holds the sweep lock
        assert other.scalar(text("SELECT pg_try_advisory_xact_lock(4242002)"))
        assert sweep_once(rt, lambda _j: None, broker=FakeBroker(set())) == []
    assert sweep_once(rt, lambda _j: None, broker=FakeBroker(set())) == [job_id]
