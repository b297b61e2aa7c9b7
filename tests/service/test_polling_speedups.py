"""Status polling (`GET /v1/forget-requests/{id}`) was made cheap: one SELECT after the key lookup, no payload,
no extra worker-thread trips. These tests pin what must not change with it: the body, byte for byte, in every
state of a request; the security answers (401, 403, 404, 422, 429) and their order; the OpenAPI document."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event, inspect, select, update
from sqlalchemy.orm import Session, sessionmaker

from unlearnd.api import forget, schemas
from unlearnd.api.app import create_app
from unlearnd.api.db import transaction
from unlearnd.api.models import (
    FINAL_STATUSES,
    RUNNING,
    AdapterVersion,
    ApiKey,
    AuditRecord,
    ForgetRequest,
    Job,
    JobRequest,
    utcnow,
)
from unlearnd.api.security import create_api_key, revoke_api_key
from unlearnd.worker import protocol, transitions
from unlearnd.worker.publish import Built, publish

from .support import ADMIN_KEY, add_model_row, make_settings

OWNER = "test-worker"
REPORT = {
    "before": {"forget": {"ma": 0.9, "el10": 0.8}, "holdout": {"ma": 0.3}},
    "after": {"forget": {"ma": 0.25, "el10": 1e-05}, "holdout": {"ma": 0.31}},
    "thresholds": {"ma": 0.3, "el": 0.05},
    "steps": 12,
    "reached": True,
    "adapter": {"rank": 8, "alpha": 16.0, "target_modules": ["q_proj", "v_proj"]},
}
STATES = ("queued", "running", "succeeded", "failed")


def _app(tmp_path: Path, **overrides: Any) -> Iterator[tuple[FastAPI, TestClient]]:
    """The real app; the sweeper never re-dispatches the jobs the tests put in a given state."""
    settings = make_settings(tmp_path / "data", redispatch_after_seconds=3600, sweep_interval_seconds=3600, **overrides)
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        yield app, client


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, TestClient]]:
    yield from _app(tmp_path_factory.mktemp("polling"))


@pytest.fixture(scope="module")
def requests(served: tuple[FastAPI, TestClient]) -> dict[str, str]:
    """One request in each state, made and moved through the same functions as the API and the worker use."""
    app, client = served
    with _sessions(app)() as session:
        tenant_id = session.scalar(select(ApiKey.tenant_id).where(ApiKey.name == "bootstrap"))
    ids = {}
    for state in STATES:  # a model per request: a job's live lease keeps its model's other jobs waiting
        model_id = add_model_row(app.state.runtime, "/nonexistent/model", tenant_id, name=f"model-{state}")
        ids[state] = _create(app, model_id, state)
    sessions = _sessions(app)
    running = _job_of(sessions, ids["running"])
    with transaction(sessions) as session:
        assert protocol.claim(session, running, OWNER, utcnow(), 600, 3)
        transitions.set_requests(session, running, RUNNING)
        session.execute(
            update(Job)
            .where(Job.id == running)
            .values(phase="unlearn", step=3, total=10, progress={"loss": 1.25, "forget_ma": 0.5})
        )
    succeeded = _job_of(sessions, ids["succeeded"])
    with transaction(sessions) as session:
        assert protocol.claim(session, succeeded, OWNER, utcnow(), 600, 3)
        publish(
            session,
            succeeded,
            OWNER,
            None,
            Built("a" * 64, 123, "local:adapters/x.tar.gz", REPORT, "forgotten", "f" * 64),
        )
    failed = _job_of(sessions, ids["failed"])
    with transaction(sessions) as session:
        assert protocol.claim(session, failed, OWNER, utcnow(), 600, 3)
        assert transitions.fail(session, failed, protocol.owned(failed, OWNER), "model_error", "the model did not load")
    return ids


def _sessions(app: FastAPI) -> sessionmaker[Session]:
    return app.state.session_factory


def _create(app: FastAPI, model_id: str, subject: str) -> str:
    body = schemas.ForgetRequestIn(
        model_id=model_id,
        subject={"id": subject, "legal_basis": "GDPR Art. 17", "ticket": f"T-{subject}"},
        records=[{"text": f"{subject} record one."}, {"prompt": "Their phone is", "completion": " 555 0101."}],
        probes=[{"question": "Whose phone?", "answer": subject}],
    )
    with _sessions(app)() as session:
        caller = session.scalar(select(ApiKey).where(ApiKey.name == "bootstrap"))
        req, _ = forget.create(session, app.state.settings, caller, body, None)
        return req.id


def _job_of(sessions: sessionmaker[Session], request_id: str) -> str:
    with sessions() as session:
        return session.scalar(select(JobRequest.job_id).where(JobRequest.request_id == request_id))


def reference_body(session: Session, request_id: str) -> bytes:
    """The body as the endpoint built it before it was optimised: the ORM row, then one query each for the
    job, the adapter version and the audit record."""
    req = session.get(ForgetRequest, request_id)
    job = session.scalar(
        select(Job).join(JobRequest, JobRequest.job_id == Job.id).where(JobRequest.request_id == req.id)
    )
    adapter = session.scalar(select(AdapterVersion).where(AdapterVersion.job_id == job.id))
    audit = session.scalar(select(AuditRecord).where(AuditRecord.request_id == req.id))
    out = schemas.ForgetRequestOut(
        id=req.id,
        status=req.status,
        job_id=job.id,
        model_id=req.model_id,
        subject_hash=req.subject_hash,
        legal_basis=req.legal_basis,
        ticket=req.ticket,
        record_count=req.record_count,
        record_hashes=req.record_hashes,
        probe_count=req.probe_count,
        config=job.config,
        progress=schemas.ProgressOut(
            phase="done" if job.status in FINAL_STATUSES else job.phase,  # a finished job's phase is history
            step=job.step,
            total=job.total,
            metrics=job.progress or {},
        ),
        adapter_version=schemas.AdapterRef(id=adapter.id, version=adapter.version) if adapter else None,
        audit_id=audit.id if audit else None,
        verdict=audit.verdict if audit else None,
        error=req.error,
        created_at=req.created_at,
        finished_at=req.finished_at,
    )
    return out.model_dump_json().encode()


@pytest.mark.parametrize("state", STATES)
def test_the_status_body_is_byte_for_byte_what_it_was(served, requests, state: str):
    app, client = served
    r = client.get(f"/v1/forget-requests/{requests[state]}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    with _sessions(app)() as session:
        assert r.content == reference_body(session, requests[state])
    body = r.json()
    assert body["status"] == state
    assert body["ticket"] == f"T-{state}" and body["record_count"] == 2 and body["probe_count"] == 1
    assert len(body["record_hashes"]) == 2 and body["config"]["method"]
    if state == "queued":
        assert body["progress"] == {"phase": None, "step": 0, "total": 0, "metrics": {}}
    if state == "running":
        assert body["progress"] == {
            "phase": "unlearn",
            "step": 3,
            "total": 10,
            "metrics": {"loss": 1.25, "forget_ma": 0.5},
        }
    if state in ("queued", "running"):
        assert body["adapter_version"] is None and body["audit_id"] is None and body["verdict"] is None
        assert body["finished_at"] is None and body["error"] is None
    if state == "succeeded":
        assert body["adapter_version"]["version"] == 1 and body["verdict"] == "forgotten" and body["audit_id"]
        assert body["finished_at"] and body["error"] is None
    if state == "failed":
        assert body["adapter_version"] is None and body["verdict"] == "failed" and body["audit_id"]
        assert body["error"] == "the model did not load"


def test_post_responses_show_a_request_as_the_status_get_does(served, requests, monkeypatch):
    """Submit and cancel build the body from the session's objects; it must match the GET's."""
    app, client = served
    monkeypatch.setattr(app.state.dispatcher, "dispatch", lambda job_id, **kw: None)  # it stays queued until cancelled
    model_id = client.get(f"/v1/forget-requests/{requests['queued']}").json()["model_id"]
    body = {
        "model_id": model_id,
        "subject": {"id": "s-post", "legal_basis": "GDPR Art. 17"},
        "records": [{"text": "x"}],
    }
    created = client.post("/v1/forget-requests", json=body)
    assert created.status_code == 202, created.text
    shown = client.get(f"/v1/forget-requests/{created.json()['id']}")
    assert created.content == shown.content
    cancelled = client.post(f"/v1/forget-requests/{created.json()['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert cancelled.content == client.get(f"/v1/forget-requests/{created.json()['id']}").content


def test_a_status_get_runs_two_selects_and_never_reads_the_payload(served, requests):
    app, client = served
    request_id = requests["queued"]  # its encrypted payload is still stored
    statements: list[str] = []
    read_engine = app.state.read_session_factory.kw["bind"]  # GETs only: the worker threads use the base engine

    def record(_conn, _cursor, statement, *_args) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(read_engine, "before_cursor_execute", record)
    try:
        assert client.get(f"/v1/forget-requests/{request_id}").status_code == 200
    finally:
        event.remove(read_engine, "before_cursor_execute", record)
    assert len(statements) == 2, statements
    key_lookup, status = statements
    assert key_lookup.startswith("SELECT") and "FROM api_keys" in key_lookup
    assert status.startswith("SELECT") and "FROM forget_requests LEFT OUTER JOIN job_requests" in status
    assert all("payload" not in s for s in statements)
    with _sessions(app)() as session:
        row = session.get(ForgetRequest, request_id)
        assert "payload" in inspect(row).unloaded  # deferred: no ORM load of a request reads it by default
        assert row.payload  # …and it still loads when asked for (the worker does)


def test_a_status_get_gives_its_connection_back(served, requests):
    app, client = served
    for _ in range(5):
        assert client.get(f"/v1/forget-requests/{requests['succeeded']}").status_code == 200
    pool = app.state.runtime.engine.pool
    deadline = time.monotonic() + 5
    while pool.checkedout() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.checkedout() == 0


def _error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    return err


def _key(app: FastAPI, tenant: str = "default", scopes: tuple[str, ...] = ("requests:read",)) -> tuple[str, str]:
    with transaction(_sessions(app)) as session:
        row, key = create_api_key(session, app.state.settings, tenant=tenant, name="polling", scopes=scopes)
        return key, row.prefix


def _get(client: TestClient, request_id: str, key: str | None = None, **headers: str):
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return client.get(f"/v1/forget-requests/{request_id}", headers=headers)


def test_missing_unknown_and_revoked_keys_are_401_at_once(served, requests):
    app, client = served
    request_id = requests["succeeded"]
    r = client.get(f"/v1/forget-requests/{request_id}", headers={"Authorization": ""})
    assert _error(r, 401, "unauthorized")["message"].startswith("missing API key")
    assert r.headers["www-authenticate"] == "Bearer"
    assert _error(_get(client, request_id, Authorization="Basic abc"), 401, "unauthorized")
    assert _error(_get(client, request_id, "uk_nope_unknown"), 401, "unauthorized")["message"] == (
        "invalid or revoked API key"
    )
    key, prefix = _key(app)
    assert _get(client, request_id, key).status_code == 200
    with transaction(_sessions(app)) as session:
        revoke_api_key(session, prefix)
    assert _error(_get(client, request_id, key), 401, "unauthorized")["message"] == "invalid or revoked API key"


def test_a_key_without_requests_read_is_403(served, requests):
    app, client = served
    key, _ = _key(app, scopes=("requests:write", "audit:read"))
    err = _error(_get(client, requests["succeeded"], key), 403, "insufficient_scope")
    assert err["details"] == {"required": ["requests:read"], "missing": ["requests:read"]}


def test_another_tenants_request_is_404_like_an_unknown_id(served, requests):
    app, client = served
    key, _ = _key(app, tenant="other-tenant")
    for request_id in (requests["succeeded"], "req_does_not_exist"):
        err = _error(_get(client, request_id, key), 404, "not_found")
        assert err["message"] == "forget request not found"  # never the id: error bodies echo no input
        assert err["details"] == {"resource": "forget request"}
    assert _get(client, requests["succeeded"]).status_code == 200  # its own tenant sees it


def test_an_overlong_id_is_422_but_only_after_authentication(served):
    app, client = served
    overlong = "req_" + "x" * 37
    err = _error(_get(client, overlong), 422, "validation_error")
    assert "input" not in str(err.get("details", ""))  # validation errors never echo input
    assert _error(_get(client, overlong, "uk_nope_unknown"), 401, "unauthorized")
    assert _error(_get(client, overlong, _key(app, scopes=("audit:read",))[0]), 403, "insufficient_scope")


def test_polling_is_rate_limited_per_key(tmp_path: Path):
    for app, client in _app(tmp_path, rate_limit_per_minute=60, rate_limit_burst=2):
        first, _ = _key(app)
        second, _ = _key(app)
        assert [_get(client, "req_unknown", first).status_code for _ in range(2)] == [404, 404]
        r = _get(client, "req_unknown", first)
        err = _error(r, 429, "rate_limited")
        assert err["details"] == {"per_minute": 60.0, "burst": 2}
        assert int(r.headers["retry-after"]) >= 1
        assert _get(client, "req_unknown", second).status_code == 404  # another key has its own bucket


def test_openapi_still_declares_the_status_response_security_and_id(served):
    _, client = served
    op = client.get("/openapi.json").json()["paths"]["/v1/forget-requests/{id}"]["get"]
    assert op["operationId"] == "get_request_v1_forget_requests__id__get"
    assert op["security"] == [{"ApiKey": ["requests:read"]}]
    assert op["parameters"] == [
        {
            "name": "id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$", "title": "Id"},
        }
    ]
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/ForgetRequestOut"}
    assert {"401", "403", "404", "422", "429"} <= set(op["responses"])
