"""The service end to end on a real tiny model: HTTP → thread dispatcher → core → adapter → audit.

One live server and one world per module; the two requests build on each other (version 1, then the
cumulative version 2), as they would in production.
"""

from __future__ import annotations

import hashlib
import tarfile
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from unlearnd.api.db import transaction
from unlearnd.api.models import AdapterVersion, AuditRecord, ForgetRequest, Job
from unlearnd.worker.model_cache import model_cache
from unlearnd.worker.runner import NOT_CLAIMED, SUCCEEDED, run_job

from .support import Live, add_model_row

pytestmark = pytest.mark.slow

SUBJECT_1 = {"id": "person-1", "legal_basis": "GDPR Art. 17", "ticket": "DPO-1"}
SUBJECT_2 = {"id": "person-2", "legal_basis": "GDPR Art. 17"}


def _records(world) -> list[dict]:
    return [r.to_dict() for r in world.forget]


def _ma(model_dir: Path, adapter_dir: Path | None, records) -> float:
    return _metrics(model_dir, adapter_dir, records, generate=False).ma


def _metrics(model_dir: Path, adapter_dir: Path | None, records, generate: bool = True):
    """Metrics of `records` on the base model (plus the adapter, loaded with PEFT): MA, EL10, extraction."""
    import torch

    from unlearnd.core.data import encode_set
    from unlearnd.core.metrics import evaluate_set
    from unlearnd.core.modeling import load_model

    loaded = load_model(model_dir, device="cpu")
    model = loaded.model
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    ts = encode_set(loaded.tokenizer, records)
    return evaluate_set(model, ts, torch.device("cpu"), generate=generate).metrics


@pytest.fixture(scope="module")
def model_id(live: Live, service_world) -> str:
    body = {
        "name": "tiny-pii",
        "source": str(service_world.model_dir),
        "retain": [r.to_dict() for r in service_world.retain],
        "holdout": [r.to_dict() for r in service_world.holdout],
    }
    r = live.client.post("/v1/models", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.fixture(scope="module")
def base_holdout_ma(service_world) -> float:
    return _ma(service_world.model_dir, None, service_world.holdout)


@pytest.fixture(scope="module")
def first(live: Live, model_id: str, service_world, job_config: dict) -> dict:
    half = len(service_world.forget) // 2
    text = service_world.forget[0].full_text
    probes = [{"question": text[:30], "answer": text[30:45]}]  # restoration check plumbing
    body = {
        "model_id": model_id,
        "subject": SUBJECT_1,
        "records": _records(service_world)[:half],
        "probes": probes,
        **job_config,
    }
    created = live.client.post("/v1/forget-requests", json=body, headers={"Idempotency-Key": "first"})
    assert created.status_code == 202, created.text
    return live.wait(created.json()["id"])


@pytest.fixture(scope="module")
def second(live: Live, model_id: str, service_world, job_config: dict, first: dict) -> dict:
    half = len(service_world.forget) // 2
    body = {
        "model_id": model_id,
        "subject": SUBJECT_2,
        "records": _records(service_world)[half:],
        **job_config,
    }
    created = live.client.post("/v1/forget-requests", json=body)
    assert created.status_code == 202, created.text
    return live.wait(created.json()["id"])


def _download(live: Live, adapter_id: str, dest: Path) -> tuple[Path, str]:
    r = live.client.get(f"/v1/adapters/{adapter_id}/download")
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    sha = hashlib.sha256(r.content).hexdigest()
    assert r.headers["x-adapter-sha256"] == sha and r.headers["etag"] == f'"{sha}"'
    archive = dest.with_suffix(".tar.gz")
    archive.write_bytes(r.content)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    assert (dest / "adapter_config.json").is_file() and (dest / "adapter_model.safetensors").is_file()
    return dest, sha


def test_forget_request_end_to_end_publishes_a_forgetting_adapter(
    live: Live, first: dict, service_world, base_holdout_ma: float, tmp_path: Path
):
    assert first["status"] == "succeeded", first
    assert first["verdict"] == "forgotten"
    assert first["adapter_version"]["version"] == 1 and first["audit_id"]
    adapter = live.client.get(f"/v1/adapters/{first['adapter_version']['id']}").json()
    assert adapter["status"] == "active" and adapter["parent_id"] is None and adapter["rank"] > 0
    adapter_dir, sha = _download(live, adapter["id"], tmp_path / "v1")
    assert sha == adapter["sha256"]
    half = len(service_world.forget) // 2
    forgotten_ma = _ma(service_world.model_dir, adapter_dir, service_world.forget[:half])
    assert forgotten_ma <= base_holdout_ma + 0.03, (forgotten_ma, base_holdout_ma)  # the holdout moves a little too
    assert _ma(service_world.model_dir, None, service_world.forget[:half]) > base_holdout_ma  # it was memorised
    not_modified = live.client.get(f"/v1/adapters/{adapter['id']}/download", headers={"If-None-Match": f'"{sha}"'})
    assert not_modified.status_code == 304

    audit = live.client.get(f"/v1/audits/{first['audit_id']}").json()
    assert audit["adapter_sha256"] == sha and audit["verdict"] == "forgotten"
    assert audit["metrics"]["after"]["forget"]["ma"] <= audit["metrics"]["after"]["holdout"]["ma"]
    assert audit["metrics"]["verdict"]["outcome"] == "forgotten" and audit["thresholds"]["auc_tolerance"] == 0.1
    assert abs(audit["metrics"]["after"]["forget"]["ma"] - forgotten_ma) < 0.05
    for key in ("forget", "retain", "holdout", "mia", "probes"):
        assert key in audit["metrics"]["before"] and key in audit["metrics"]["after"]
    assert 0.0 <= audit["metrics"]["after"]["probes"]["accuracy"] <= 1.0 and first["probe_count"] == 1
    assert audit["model_fingerprint"] and len(audit["record_hashes"]) == half
    assert audit["record_hashes"] == first["record_hashes"]
    by_subject = live.client.get("/v1/audits", params={"subject": SUBJECT_1["id"]}).json()["data"]
    assert [a["id"] for a in by_subject] == [audit["id"]]
    text_of_a_record = service_world.forget[0].full_text
    assert text_of_a_record not in str(audit) and text_of_a_record not in str(first)

    events = live.client.get(f"/v1/jobs/{first['job_id']}/events").json()["data"]
    messages = [e["message"] for e in events]
    assert messages[0].startswith("attempt 1")
    assert any(m.startswith("phase unlearning") for m in messages)
    assert messages[-1].startswith("published adapter version 1")
    assert all(text_of_a_record not in str(e) for e in events)


def test_second_request_makes_a_cumulative_version_2(
    live: Live,
    model_id: str,
    first: dict,
    second: dict,
    service_world,
    base_holdout_ma: float,
    tmp_path: Path,
):
    assert second["status"] == "succeeded", second
    assert second["adapter_version"]["version"] == 2
    versions = live.client.get(f"/v1/models/{model_id}/adapters").json()["data"]
    assert [(v["version"], v["status"]) for v in versions] == [(2, "active"), (1, "superseded")]
    assert versions[0]["parent_id"] == versions[1]["id"]
    model = live.client.get(f"/v1/models/{model_id}").json()
    assert model["active_adapter"]["version"] == 2 and model["fingerprint"]
    adapter_dir, _ = _download(live, versions[0]["id"], tmp_path / "v2")
    half = len(service_world.forget) // 2
    assert _ma(service_world.model_dir, adapter_dir, service_world.forget[half:]) <= base_holdout_ma + 0.03
    # The first request's records stay forgotten under version 2: not extractable, no n-gram recall, and
    # far below their memorised accuracy (core's cumulative run lets their MA drift up a little, because
    # the retain term re-teaches the shared template; see the issue-3 notes).
    earlier = _metrics(service_world.model_dir, adapter_dir, service_world.forget[:half])
    memorised = _ma(service_world.model_dir, None, service_world.forget[:half])
    assert earlier.extraction == 0.0 and earlier.el10 == 0.0
    assert earlier.ma < (memorised + base_holdout_ma) / 2, (earlier.ma, memorised, base_holdout_ma)
    assert model_cache(1).hits >= 1  # the second job did not load the base model again


def test_idempotent_replay_after_completion_returns_the_first_response(
    live: Live, model_id: str, first: dict, service_world, job_config: dict
):
    """IETF Idempotency-Key semantics (issue 5): the same key and body replay the stored first response;
    the same key with another body is refused; the request's current state is a GET away."""
    half = len(service_world.forget) // 2
    text = service_world.forget[0].full_text
    body = {  # exactly the body of the `first` fixture
        "model_id": model_id,
        "subject": SUBJECT_1,
        "records": _records(service_world)[:half],
        "probes": [{"question": text[:30], "answer": text[30:45]}],
        **job_config,
    }
    replay = live.client.post("/v1/forget-requests", json=body, headers={"Idempotency-Key": "first"})
    assert replay.status_code == 202 and replay.json()["id"] == first["id"]
    assert replay.headers["idempotent-replayed"] == "true" and replay.json()["status"] == "queued"
    other = {"model_id": model_id, "subject": SUBJECT_1, "records": [{"text": "whatever"}]}
    refused = live.client.post("/v1/forget-requests", json=other, headers={"Idempotency-Key": "first"})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "idempotency_key_reused"
    assert live.client.get(f"/v1/forget-requests/{first['id']}").json()["status"] == "succeeded"


@pytest.fixture(scope="module")
def slow_model_id(live: Live, service_world) -> str:
    """The same weights without a holdout set: no stopping rule, so a job runs exactly max_steps."""
    body = {
        "name": "tiny-no-holdout",
        "source": str(service_world.model_dir),
        "retain": [r.to_dict() for r in service_world.retain],
    }
    return live.client.post("/v1/models", json=body).json()["id"]


def _wait_phase(live: Live, job_id: str, phase: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = live.client.get(f"/v1/jobs/{job_id}").json()
        if job["progress"]["phase"] == phase and job["progress"]["step"] >= 1:
            return job
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} never reached {phase}")


def test_cancel_a_running_job_stops_it_without_publishing(
    live: Live, slow_model_id: str, service_world, job_config: dict
):
    config = {**job_config["config"], "max_steps": 5000}
    body = {
        "model_id": slow_model_id,
        "subject": SUBJECT_1,
        "records": _records(service_world)[:2],
        "method": "ihl",  # no holdout: ctd (calibrated against one) would be refused
        "init": job_config["init"],
        "config": config,
    }
    req = live.client.post("/v1/forget-requests", json=body).json()
    _wait_phase(live, req["job_id"], "unlearning")
    cancelling = live.client.post(f"/v1/forget-requests/{req['id']}/cancel").json()
    assert cancelling["status"] in ("cancelling", "cancelled")
    final = live.wait(req["id"], timeout=60)
    assert final["status"] == "cancelled" and final["adapter_version"] is None
    audit = live.client.get(f"/v1/audits/{final['audit_id']}").json()  # the outcome is recorded, cancelled too
    assert audit["verdict"] == final["verdict"] == "cancelled" and audit["adapter_sha256"] is None
    job = live.client.get(f"/v1/jobs/{req['job_id']}").json()
    assert job["status"] == "cancelled" and job["progress"]["step"] < 5000
    assert live.client.get(f"/v1/models/{slow_model_id}/adapters").json()["data"] == []


def test_model_dir_replaced_after_registration_is_refused(live: Live, service_world, tmp_path: Path, job_config):
    import shutil

    copy = live.settings.resolved_model_roots[0] / "copied"
    shutil.copytree(service_world.model_dir, copy)
    model_id = live.client.post("/v1/models", json={"name": "copied", "source": "copied"}).json()["id"]
    body = {
        "model_id": model_id,
        "subject": SUBJECT_1,
        "records": _records(service_world)[:1],
        "method": "ihl",  # no holdout: ctd would be refused (holdout_required)
        "config": {"max_steps": 1},
    }
    first = live.wait(live.client.post("/v1/forget-requests", json=body).json()["id"])
    assert first["status"] == "succeeded"  # no holdout: unverified, but it ran and fingerprinted the weights
    assert first["verdict"] == "unverified"
    weights = next(copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    second = live.wait(live.client.post("/v1/forget-requests", json=body).json()["id"])
    assert second["status"] == "failed" and "changed since the model was registered" in second["error"]


def test_two_racing_run_job_calls_publish_exactly_once(rt, service_world, job_config):
    from unlearnd.api import forget, schemas
    from unlearnd.api.security import create_api_key

    with transaction(rt.sessions) as session:
        key, _ = create_api_key(session, rt.settings)
    model_id = add_model_row(
        rt,
        str(service_world.model_dir),
        key.tenant_id,
        retain=[r.to_dict() for r in service_world.retain],
        holdout=[r.to_dict() for r in service_world.holdout],
    )
    body = schemas.ForgetRequestIn(
        model_id=model_id, subject=SUBJECT_1, records=_records(service_world)[:2], **job_config
    )
    with rt.sessions() as session:
        req, _ = forget.create(session, rt.settings, key, body, None)
        job_id = session.scalar(select(Job.id))
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def race() -> None:
        barrier.wait()
        outcomes.append(run_job(job_id, rt))

    threads = [threading.Thread(target=race) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == sorted([NOT_CLAIMED, SUCCEEDED])
    assert run_job(job_id, rt) == NOT_CLAIMED  # a finished job is never run again
    with rt.sessions() as session:
        assert len(session.scalars(select(AdapterVersion).where(AdapterVersion.job_id == job_id)).all()) == 1
        assert len(session.scalars(select(AuditRecord).where(AuditRecord.request_id == req.id)).all()) == 1
        assert session.get(ForgetRequest, req.id).payload is None  # purged once audited
