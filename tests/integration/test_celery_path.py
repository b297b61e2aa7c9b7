"""The production path end to end: HTTP → API (Celery dispatcher, PostgreSQL) → Redis → a real `unlearnd
worker` subprocess → adapter + audit. One worker and one API for the module; each test its own model."""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select

from unlearnd.api.models import AdapterVersion, AuditRecord, ForgetRequest
from unlearnd.worker.runtime import Runtime

from .support import LONG, TINY, Api, Broker, WorkerProcess, make_settings, register_model, start_api, submit

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_url: str, broker: Broker, tiny_world) -> Iterator[tuple[Api, WorkerProcess]]:
    root = tmp_path_factory.mktemp("celery-path")
    settings = make_settings(root / "data", pg_url, broker)
    api = start_api(settings)  # migrates the fresh database
    worker = WorkerProcess(settings, root / "worker.log")
    try:
        worker.start()
        yield api, worker
    finally:
        worker.stop()
        api.stop()
        print(f"\n--- worker log tail ---\n{worker.log()[-3000:]}")


@pytest.fixture(scope="module")
def db(stack) -> Iterator[Runtime]:
    rt = Runtime.build(stack[0].settings)
    yield rt
    rt.close()


def _records(world, n: int = 1, start: int = 0) -> list[dict]:
    return [r.to_dict() for r in world.forget[start : start + n]]


def _versions(db: Runtime, model_id: str) -> list[tuple[int, str]]:
    with db.sessions() as session:
        rows = session.execute(
            select(AdapterVersion.version, AdapterVersion.job_id)
            .where(AdapterVersion.model_id == model_id)
            .order_by(AdapterVersion.version)
        )
        return [(v, j) for v, j in rows]


def _model_events(api: Api, job_id: str) -> list[dict]:
    return [e for e in api.events(job_id) if e["data"].get("model_cache")]


def test_forget_request_over_http_runs_on_the_celery_worker(stack, db, tiny_world, tmp_path: Path):
    api, worker = stack
    assert api.client.get("/readyz").json()["dispatcher"] == "celery"
    model_id = register_model(api, tiny_world, "happy")
    req = submit(api, model_id, _records(tiny_world, 2), TINY, subject="happy-subject")
    final = api.wait(req["id"])
    assert final["status"] == "succeeded", final
    assert final["adapter_version"]["version"] == 1 and final["audit_id"]

    # It ran in the worker process, not in the API.
    events = api.events(req["job_id"])
    started = [e for e in events if e["message"].startswith("attempt ")]
    assert len(started) == 1 and str(worker.proc.pid) in started[0]["data"]["worker"]

    r = api.client.get(f"/v1/adapters/{final['adapter_version']['id']}/download")
    assert r.status_code == 200
    sha = hashlib.sha256(r.content).hexdigest()
    assert r.headers["x-adapter-sha256"] == sha
    (tmp_path / "a.tar.gz").write_bytes(r.content)
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("adapter_model.safetensors") for n in names)

    audit = api.client.get(f"/v1/audits/{final['audit_id']}").json()
    assert audit["request_id"] == req["id"] and audit["adapter_sha256"] == sha
    assert api.client.get("/v1/audits", params={"subject": "happy-subject"}).json()["data"][0]["id"] == audit["id"]
    assert api.client.get("/v1/audits/verify").json()["ok"] is True


def test_second_job_on_the_same_base_model_uses_the_worker_model_cache(stack, tiny_world):
    api, _ = stack
    model_id = register_model(api, tiny_world, "cache")  # same source directory as the first test's model
    loads = []
    for i in range(2):
        req = submit(api, model_id, _records(tiny_world, 1, start=i), TINY, subject=f"cache-{i}")
        assert api.wait(req["id"])["status"] == "succeeded"
        [event] = _model_events(api, req["job_id"])
        loads.append(event["data"])
    assert [e["model_cache"] for e in loads] == ["hit", "hit"]  # loaded once, by the first test's job
    print(f"\nmodel cache: second/third job borrow {[e['load_seconds'] for e in loads]} s")


def test_model_load_numbers_first_versus_cached(stack, tiny_world):
    """Report the first (cold) load of the worker against a cached borrow, from the jobs' events."""
    api, _ = stack
    loads = []
    for model in api.client.get("/v1/models").json()["data"]:
        for version in api.client.get(f"/v1/models/{model['id']}/adapters").json()["data"]:
            loads += [e["data"] for e in _model_events(api, version["job_id"])]
    misses = [e["load_seconds"] for e in loads if e["model_cache"] == "miss"]
    hits = [e["load_seconds"] for e in loads if e["model_cache"] == "hit"]
    assert len(misses) == 1 and hits
    assert max(hits) < misses[0]
    print(f"\nmodel load: cold {misses[0]:.3f} s, cached {sorted(hits)[len(hits) // 2]:.4f} s (median of {len(hits)})")


def test_flushed_redis_queue_is_redispatched_by_the_sweeper(stack, db, broker: Broker, tiny_world):
    api, _ = stack
    model_id = register_model(api, tiny_world, "flush", retain=False)
    busy = submit(api, model_id, _records(tiny_world, 2), LONG, subject="flush-busy")
    api.wait_step(busy["job_id"])  # the one worker is busy: the next message waits in Redis
    waiting = submit(api, model_id, _records(tiny_world, 1, start=2), TINY, subject="flush-waiting")
    assert waiting["job_id"] in broker.queued_ids()
    assert broker.flush() > 0  # Redis restarted without persistence: queue, unacked set, bindings gone
    assert broker.queued_ids() == []

    assert api.wait(busy["id"])["status"] == "succeeded"
    final = api.wait(waiting["id"])
    assert final["status"] == "succeeded" and final["adapter_version"]["version"] == 2
    assert _versions(db, model_id) == [(1, busy["job_id"]), (2, waiting["job_id"])]
    messages = [e["message"] for e in api.events(waiting["job_id"])]
    assert [m for m in messages if m.startswith("attempt ")] == ["attempt 1 of 3 started"]
    with db.sessions() as session:
        for req in (busy, waiting):
            n = session.scalar(select(func.count()).select_from(AuditRecord).where(AuditRecord.request_id == req["id"]))
            assert n == 1


def test_concurrent_submissions_publish_gapless_versions(stack, db, tiny_world):
    api, _ = stack
    model_id = register_model(api, tiny_world, "concurrent", retain=False)
    records = _records(tiny_world, 1)
    config = {**TINY, "max_steps": 1, "eval_every": 1, "rank": 1, "eval_max_records": 1, "fisher_max_examples": 1}
    keys = [f"distinct-{i}" for i in range(20)] + ["repeated"] * 5

    def one(key: str) -> dict:
        return submit(api, model_id, records, config, subject=f"s-{key}", key=key)

    with ThreadPoolExecutor(max_workers=len(keys)) as pool:
        created = list(pool.map(one, keys))
    repeated = {c["id"] for c, k in zip(created, keys, strict=True) if k == "repeated"}
    assert len(repeated) == 1
    ids = {c["id"] for c in created}
    assert len(ids) == 21
    with db.sessions() as session:
        count = session.scalar(
            select(func.count()).select_from(ForgetRequest).where(ForgetRequest.model_id == model_id)
        )
    assert count == 21
    finals = [api.wait(i, timeout=600) for i in ids]
    assert {f["status"] for f in finals} == {"succeeded"}
    versions = _versions(db, model_id)
    assert [v for v, _ in versions] == list(range(1, 22))
    assert len({j for _, j in versions}) == 21  # one version per job
    assert sorted(f["adapter_version"]["version"] for f in finals) == list(range(1, 22))


def test_cancel_stops_a_running_job_within_a_few_steps(stack, db, tiny_world):
    api, _ = stack
    model_id = register_model(api, tiny_world, "cancel", retain=False)
    req = submit(api, model_id, _records(tiny_world, 2), {**LONG, "max_steps": 5000, "eval_every": 5000})
    seen = api.wait_step(req["job_id"], step=2)["progress"]["step"]
    r = api.client.post(f"/v1/forget-requests/{req['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] in ("cancelling", "cancelled")
    final = api.wait(req["id"], timeout=120)
    assert final["status"] == "cancelled" and final["adapter_version"] is None
    job = api.job(req["job_id"])
    assert job["status"] == "cancelled"
    assert job["progress"]["step"] <= seen + 30, (seen, job["progress"])
    assert _versions(db, model_id) == []
