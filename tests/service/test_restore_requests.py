"""Forget requests that restore from a named checkpoint (`restore_from`, the `restore` method): what the API
accepts, and that the worker loads the checkpoint and distils it (README "Restoration")."""

from __future__ import annotations

import shutil

import pytest

from .support import ADMIN_KEY, Live

SUBJECT = {"id": "doc-batch-7", "legal_basis": "poisoned fine-tuning data"}


@pytest.fixture(scope="module")
def models(live: Live, service_world) -> dict:
    """The tiny world's model, and a byte-identical copy of it registered as a second model (a checkpoint
    that knows the records exactly as the model does)."""
    root = live.settings.resolved_model_roots[0]
    shutil.copytree(service_world.model_dir, root / "checkpoint")
    body = {
        "name": "deployed",
        "source": str(service_world.model_dir),
        "retain": [r.to_dict() for r in service_world.retain],
        "holdout": [r.to_dict() for r in service_world.holdout],
    }
    deployed = live.client.post("/v1/models", json=body).json()["id"]
    checkpoint = live.client.post("/v1/models", json={"name": "checkpoint", "source": "checkpoint"}).json()["id"]
    return {"deployed": deployed, "checkpoint": checkpoint}


def _body(world, model_id: str, **extra) -> dict:
    return {
        "model_id": model_id,
        "subject": SUBJECT,
        "records": [r.to_dict() for r in world.forget[:2]],
        "config": {"max_steps": 8, "eval_every": 4},
        **extra,
    }


def test_restore_from_must_name_another_model_of_the_callers_tenant(live: Live, service_world, models):
    # the model itself, or the same directory registered again, cannot teach what it is being trained away from
    again = live.client.post("/v1/models", json={"name": "again", "source": str(service_world.model_dir)}).json()["id"]
    for bad in ("mdl_doesnotexist", models["deployed"], again):
        r = live.client.post("/v1/forget-requests", json=_body(service_world, models["deployed"], restore_from=bad))
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_restore_from", r.text
    # another method with restore_from, or restore without it: core's check, a clear 422
    r = live.client.post(
        "/v1/forget-requests",
        json=_body(service_world, models["deployed"], restore_from=models["checkpoint"], method="ctd"),
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_config"
    assert "only used by the restore" in r.json()["error"]["message"]
    r = live.client.post("/v1/forget-requests", json=_body(service_world, models["deployed"], method="restore"))
    assert r.status_code == 422 and "needs restore_from" in r.json()["error"]["message"]


def test_restore_job_distils_the_named_checkpoint(live: Live, service_world, models):
    """The checkpoint here is the deployed model itself, which knows the records: distilling it keeps them
    known, so the verdict is honestly not `forgotten` (the default method, ctd, forgets them in these steps)
    and the forget term is zero from the first step. A checkpoint that never saw them is what forgets and
    restores (bench/restor)."""
    from unlearnd import Client

    with Client(live.url, ADMIN_KEY) as sdk:  # the SDK passes restore_from through
        created = sdk.forget(
            models["deployed"],
            [r.to_dict() for r in service_world.forget[:2]],
            subject=SUBJECT["id"],
            legal_basis=SUBJECT["legal_basis"],
            config={"max_steps": 8, "eval_every": 4},
            restore_from=models["checkpoint"],
        )
    final = live.wait(created.id)
    job = live.client.get(f"/v1/jobs/{final['job_id']}").json()
    assert job["config"]["method"] == "restore" and job["config"]["restore_from"] == models["checkpoint"]
    assert final["status"] in ("succeeded", "failed") and final["verdict"] != "forgotten", final
    audit = live.client.get(f"/v1/audits/{final['audit_id']}").json()
    assert audit["verdict"] == final["verdict"]


def test_a_checkpoint_with_another_vocabulary_fails_the_job_with_a_clear_error(live: Live, service_world, models):
    from transformers import AutoModelForCausalLM

    root = live.settings.resolved_model_roots[0]
    other = root / "other-vocab"
    shutil.copytree(service_world.model_dir, other)
    model = AutoModelForCausalLM.from_pretrained(other)
    model.resize_token_embeddings(model.get_input_embeddings().weight.size(0) + 8)
    model.save_pretrained(other)
    other_id = live.client.post("/v1/models", json={"name": "other", "source": "other-vocab"}).json()["id"]
    body = _body(service_world, models["deployed"], restore_from=other_id)
    final = live.wait(live.client.post("/v1/forget-requests", json=body).json()["id"])
    assert final["status"] == "failed" and "another vocabulary size" in (final["error"] or ""), final
