"""Restarts lose nothing and duplicate nothing: a service stopped mid-job, a worker killed mid-job (its
lease expires), and a real `unlearnd serve` process killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from unlearnd.api import forget, schemas
from unlearnd.api.db import transaction, upgrade_to_head
from unlearnd.api.models import AdapterVersion, AuditRecord, Job, JobEvent, utcnow
from unlearnd.api.security import create_api_key
from unlearnd.worker.runtime import Runtime

from .support import (
    ADMIN_KEY,
    add_model_row,
    make_settings,
    model_roots_for,
    start_live,
    stop_live,
    wait_for_request,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STEPS = 40  # no holdout → no stopping rule → exactly this many steps: long enough to interrupt


def _register(client: httpx.Client, world) -> str:
    body = {"name": "tiny", "source": str(world.model_dir), "retain": [r.to_dict() for r in world.retain]}
    r = client.post("/v1/models", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _body(model_id: str, world, job_config: dict) -> dict:
    return {
        "model_id": model_id,
        "subject": {"id": "restart-subject", "legal_basis": "GDPR Art. 17"},
        "records": [r.to_dict() for r in world.forget[:2]],
        "method": "ihl",  # the model has no holdout: ctd (which calibrates against one) would be refused
        "init": job_config["init"],
        "config": {**job_config["config"], "max_steps": STEPS, "eval_every": STEPS},
    }


def _wait_unlearning(client: httpx.Client, job_id: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["progress"]["phase"] == "unlearning" and job["progress"]["step"] >= 1:
            return
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.05)
    raise TimeoutError("the job never started unlearning")


def _assert_published_once(settings, job_id: str, request_id: str) -> list[str]:
    rt = Runtime.build(settings)
    try:
        with rt.sessions() as session:
            assert len(session.scalars(select(AdapterVersion).where(AdapterVersion.job_id == job_id)).all()) == 1
            assert len(session.scalars(select(AuditRecord).where(AuditRecord.request_id == request_id)).all()) == 1
            return list(
                session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
            )
    finally:
        rt.close()


def test_service_stopped_mid_job_completes_the_job_once_after_restart(tmp_path, service_world, job_config):
    data = tmp_path / "data"
    first = start_live(data)
    try:
        model_id = _register(first.client, service_world)
        req = first.client.post("/v1/forget-requests", json=_body(model_id, service_world, job_config)).json()
        _wait_unlearning(first.client, req["job_id"])
    finally:
        stop_live(first)  # graceful stop: the job goes back to the queue at its next step
    rt = Runtime.build(first.settings)
    with rt.sessions() as session:
        job = session.get(Job, req["job_id"])
        assert job.status == "queued" and job.lease_owner is None and job.step < STEPS
    rt.close()

    second = start_live(data)
    try:
        final = second.wait(req["id"])
        assert final["status"] == "succeeded" and final["adapter_version"]["version"] == 1
        assert second.client.get(f"/v1/jobs/{req['job_id']}").json()["attempts"] == 1  # a stop is no failure
    finally:
        stop_live(second)
    messages = _assert_published_once(second.settings, req["job_id"], req["id"])
    assert sum(m.startswith("attempt ") for m in messages) == 2
    assert any("returned to the queue" in m for m in messages)


def test_worker_killed_mid_job_is_resumed_once_its_lease_expires(tmp_path, service_world, job_config):
    settings = make_settings(tmp_path / "data")
    upgrade_to_head(settings)
    rt = Runtime.build(settings)
    with transaction(rt.sessions) as session:
        key, _ = create_api_key(session, settings)
    model_id = add_model_row(
        rt, str(service_world.model_dir), key.tenant_id, retain=[r.to_dict() for r in service_world.retain]
    )
    body = schemas.ForgetRequestIn(**_body(model_id, service_world, job_config))
    with rt.sessions() as session:
        req, _ = forget.create(session, settings, key, body, None)
    with transaction(rt.sessions) as session:  # a worker claimed it, then died without a word
        session.execute(
            update(Job).values(
                status="running",
                attempts=1,
                lease_owner="dead-host:1:x",
                lease_expires_at=utcnow() + timedelta(seconds=1),
                step=7,
                phase="unlearning",
            )
        )
        job_id = session.scalar(select(Job.id))
    rt.close()

    live = start_live(tmp_path / "data")
    try:
        final = live.wait(req.id)
        job = live.client.get(f"/v1/jobs/{job_id}").json()
    finally:
        stop_live(live)
    assert final["status"] == "succeeded"
    assert job["attempts"] == 2
    messages = _assert_published_once(settings, job_id, req.id)
    assert messages[0].startswith("attempt 2 of 3")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(data: Path, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "UNLEARND_DATA_DIR": str(data),
        "UNLEARND_BOOTSTRAP_KEY": ADMIN_KEY,
        "UNLEARND_MODEL_ROOTS": os.pathsep.join(str(root) for root in model_roots_for(data)),
        "UNLEARND_LEASE_SECONDS": "3",
        "UNLEARND_SWEEP_INTERVAL_SECONDS": "0.5",
        "UNLEARND_DEVICE": "cpu",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "unlearnd.cli.main", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("unlearnd serve did not become ready")


def test_serve_process_killed_mid_job_completes_the_job_once_after_restart(tmp_path, service_world, job_config):
    data, port = tmp_path / "data", _free_port()
    proc = _serve(data, port)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    try:
        model_id = _register(client, service_world)
        req = client.post("/v1/forget-requests", json=_body(model_id, service_world, job_config)).json()
        _wait_unlearning(client, req["job_id"])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (data / "work" / f"{req['job_id']}-1").is_dir()  # the killed attempt's scratch space
    port = _free_port()
    proc = _serve(data, port)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    try:
        final = wait_for_request(client, req["id"], timeout=300)
        job = client.get(f"/v1/jobs/{req['job_id']}").json()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert final["status"] == "succeeded"
    assert job["attempts"] == 2
    assert not list((data / "work").glob(f"{req['job_id']}-*"))  # removed by the second attempt
    messages = _assert_published_once(make_settings(data), req["job_id"], req["id"])
    assert [m for m in messages if m.startswith("attempt ")] == [
        "attempt 1 of 3 started",
        "attempt 2 of 3 started",
    ]
