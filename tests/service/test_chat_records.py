"""Chat records over HTTP: a conversation for a model without a chat template is a 422 at once (submission or
registration); on the tiny chat world a conversation job runs to its verdict and publishes an adapter."""

from __future__ import annotations

import json

import pytest

from .support import Live, make_model_dir

SUBJECT = {"id": "chat-subject", "legal_basis": "GDPR Art. 17"}
CHAT = {
    "messages": [
        {"role": "system", "content": "You are a support bot."},
        {"role": "user", "content": "What is Jane Roe's phone number?"},
        {"role": "assistant", "content": "+44 591 2231."},
    ]
}


def _register(live: Live, name: str, source: str, **sets) -> dict:
    r = live.client.post("/v1/models", json={"name": name, "source": source, **sets})
    return r


def test_conversations_need_a_model_with_a_chat_template(live: Live):
    plain = make_model_dir(live.settings, "plain-model")
    r = _register(live, "plain-with-chat-holdout", plain, holdout=[CHAT])
    assert r.status_code == 422 and r.json()["error"]["code"] == "chat_template_missing", r.text
    assert "Jane Roe" not in r.text  # nothing submitted is echoed

    model_id = _register(live, "plain", plain, holdout=[{"text": "A holdout text."}]).json()["id"]
    body = {"model_id": model_id, "subject": SUBJECT, "records": [CHAT]}
    r = live.client.post("/v1/forget-requests", json=body)
    assert r.status_code == 422 and r.json()["error"]["code"] == "chat_template_missing", r.text
    pair = {"model_id": model_id, "subject": SUBJECT, "records": [{"prompt": "Jane's phone:", "completion": " 2231"}]}
    assert live.client.post("/v1/forget-requests", json=pair).status_code == 202  # pairs need no template

    chat_dir = make_model_dir(live.settings, "chat-model")
    with open(f"{chat_dir}/tokenizer_config.json", "w") as f:
        json.dump({"chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}, f)
    chat_id = _register(live, "chat", chat_dir, holdout=[CHAT]).json()["id"]
    created = live.client.post("/v1/forget-requests", json={"model_id": chat_id, "subject": SUBJECT, "records": [CHAT]})
    assert created.status_code == 202, created.text
    assert len(created.json()["record_hashes"]) == 1


@pytest.mark.parametrize(
    "record",
    [
        {"messages": []},
        {"messages": [{"role": "user", "content": "no reply to unlearn"}]},
        {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "assistant", "content": "y", "name": "extra"}]},
        {"messages": [{"role": "assistant", "content": "y"}], "text": "and a text"},
    ],
)
def test_malformed_conversations_are_422_validation_error(live: Live, record: dict):
    plain = make_model_dir(live.settings, "plain-model-2")
    r = _register(live, f"m-{abs(hash(json.dumps(record))) % 10**8}", plain, holdout=[record])
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", r.text


@pytest.mark.slow
def test_a_chat_job_on_the_chat_world_runs_to_its_verdict(live: Live, tiny_chat_world):
    from tests.conftest import fast_config

    from .conftest import config_body

    world = tiny_chat_world
    body = {
        "name": "tiny-chat",
        "source": str(world.model_dir),
        "retain": [r.to_dict() for r in world.retain],
        "holdout": [r.to_dict() for r in world.holdout],
    }
    r = live.client.post("/v1/models", json=body)
    assert r.status_code == 201, r.text
    request = {
        "model_id": r.json()["id"],
        "subject": SUBJECT,
        "records": [r.to_dict() for r in world.forget[:3]],
        **config_body(fast_config()),  # the default method, ctd
    }
    created = live.client.post("/v1/forget-requests", json=request)
    assert created.status_code == 202, created.text
    done = live.wait(created.json()["id"])
    assert done["status"] == "succeeded", done
    assert done["verdict"] == "forgotten" and done["adapter_version"]["version"] == 1
    audit = live.client.get(f"/v1/audits/{done['audit_id']}").json()
    assert audit["metrics"]["before"]["forget"]["extraction"] > 0.5
    assert audit["metrics"]["after"]["forget"]["extraction"] == 0.0
    reply = world.forget[0].messages[-1].content
    assert reply not in json.dumps(audit) and reply not in json.dumps(done)
