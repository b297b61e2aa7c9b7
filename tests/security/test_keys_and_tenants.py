"""Tenants and scoped keys: every endpoint declares its scope (403 without it), a revoked key is 401, and
another tenant's ids answer exactly like ids that do not exist (404), for every resource type."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from tests.service.support import Live, make_model_dir, wait_for_request
from unlearnd.api.db import transaction
from unlearnd.api.models import AdapterVersion
from unlearnd.api.security import ALL_SCOPES, revoke_api_key
from unlearnd.cli.main import app as cli_app

from .conftest import client, expect_error, make_key, sessions

# (method, path template, scope it needs); {model} … {audit} are tenant A's ids.
ENDPOINTS = [
    ("POST", "/v1/models", "models:admin"),
    ("GET", "/v1/models/{model}/adapters", "adapters:read"),
    ("POST", "/v1/forget-requests", "requests:write"),
    ("GET", "/v1/forget-requests", "requests:read"),
    ("GET", "/v1/forget-requests/{request}", "requests:read"),
    ("POST", "/v1/forget-requests/{request}/cancel", "requests:write"),
    ("GET", "/v1/jobs/{job}", "requests:read"),
    ("GET", "/v1/jobs/{job}/events", "requests:read"),
    ("GET", "/v1/adapters/{adapter}", "adapters:read"),
    ("GET", "/v1/adapters/{adapter}/download", "adapters:read"),
    ("GET", "/v1/audits", "audit:read"),
    ("GET", "/v1/audits/verify", "audit:read"),
    ("GET", "/v1/audits/{audit}", "audit:read"),
    ("GET", "/v1/audits/{audit}/certificate", "audit:read"),
    ("GET", "/v1/audits/{audit}/report", "audit:read"),
    ("GET", "/metrics", "models:admin"),
]
# Every resource type, by id: what tenant B must not see (nor be able to tell exists).
RESOURCE_PATHS = [
    ("GET", "/v1/models/{model}"),
    ("GET", "/v1/models/{model}/adapters"),
    ("GET", "/v1/forget-requests/{request}"),
    ("POST", "/v1/forget-requests/{request}/cancel"),
    ("GET", "/v1/jobs/{job}"),
    ("GET", "/v1/jobs/{job}/events"),
    ("GET", "/v1/adapters/{adapter}"),
    ("GET", "/v1/adapters/{adapter}/download"),
    ("GET", "/v1/audits/{audit}"),
    ("GET", "/v1/audits/{audit}/certificate"),
    ("GET", "/v1/audits/{audit}/report"),
]
SUBJECT = {"id": "tenant-a-subject", "legal_basis": "GDPR Art. 17"}


@pytest.fixture(scope="module")
def acme(live: Live, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tenant A ("acme") with one resource of every type: a model, a (failed) request with its job, events
    and audit, and an adapter version."""
    key = make_key(live, "acme")
    with client(live, key) as c:
        source = make_model_dir(live.settings, "acme-model")  # no weights: the job fails fast and cleanly
        model = c.post("/v1/models", json={"name": "acme-model", "source": source}).raise_for_status().json()
        body = {"model_id": model["id"], "subject": SUBJECT, "records": [{"text": "Acme record."}]}
        req = c.post("/v1/forget-requests", json=body).raise_for_status().json()
        final = wait_for_request(c, req["id"], timeout=120)
    with transaction(sessions(live)) as session:
        adapter = AdapterVersion(
            tenant_id=_tenant_of(live, key),
            model_id=model["id"],
            version=1,
            job_id=req["job_id"],
            rank=8,
            alpha=16.0,
            target_modules=["q_proj"],
            sha256="0" * 64,
            size_bytes=1,
            storage_uri="local:adapters/none.tar.gz",
        )
        session.add(adapter)
        session.flush()
        adapter_id = adapter.id
    ids = {
        "model": model["id"],
        "request": req["id"],
        "job": req["job_id"],
        "audit": final["audit_id"],
        "adapter": adapter_id,
    }
    return {"key": key, "ids": ids}


def _tenant_of(live: Live, key: str) -> str:
    from unlearnd.api.security import find_api_key

    with transaction(sessions(live)) as session:
        return find_api_key(session, live.settings, key).tenant_id


def _call(c: httpx.Client, method: str, path: str) -> httpx.Response:
    return c.request(method, path, json={} if method == "POST" else None)


@pytest.mark.parametrize("method, template, needed", ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
def test_a_key_without_the_endpoints_scope_is_403(live: Live, acme: dict, method: str, template: str, needed: str):
    others = [s for s in ALL_SCOPES if s != needed]
    path = template.format(**acme["ids"])
    with client(live, make_key(live, "acme", others)) as c:
        err = expect_error(_call(c, method, path), 403, "insufficient_scope")
    assert err["details"]["missing"] == [needed]
    with client(live, make_key(live, "acme", [needed])) as c:
        r = _call(c, method, path)
    assert r.status_code not in (401, 403), r.text


def test_model_reads_and_the_public_key_need_no_particular_scope(live: Live, acme: dict):
    with client(live, make_key(live, "acme", ["audit:read"])) as c:
        assert c.get("/v1/models").status_code == 200
        assert c.get(f"/v1/models/{acme['ids']['model']}").status_code == 200
    assert httpx.get(f"{live.url}/v1/keys/audit-public").json()["alg"] == "Ed25519"


@pytest.mark.parametrize("method, template", RESOURCE_PATHS, ids=[p for _, p in RESOURCE_PATHS])
def test_another_tenants_ids_are_404_like_unknown_ids(live: Live, acme: dict, method: str, template: str):
    with client(live, acme["key"]) as c:  # the owner sees it (a blob is missing: 410 for the download)
        assert _call(c, method, template.format(**acme["ids"])).status_code in (200, 202, 409, 410)
    with client(live, make_key(live, "globex")) as c:
        theirs = expect_error(_call(c, method, template.format(**acme["ids"])), 404, "not_found")
        unknown_ids = {k: f"{v.split('_')[0]}_{'0' * 32}" for k, v in acme["ids"].items()}
        unknown = expect_error(_call(c, method, template.format(**unknown_ids)), 404, "not_found")
    assert theirs == unknown  # the same body: nothing tells them apart (and neither echoes the id)


def test_lists_and_writes_never_cross_tenants(live: Live, acme: dict):
    ids = acme["ids"]
    with client(live, make_key(live, "globex")) as c:
        assert ids["model"] not in [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert c.get("/v1/audits").json()["data"] == []
        assert c.get("/v1/forget-requests").json()["data"] == []
        assert c.get("/v1/forget-requests", params={"model_id": ids["model"]}).json()["data"] == []
        assert c.get("/v1/audits", params={"model_id": ids["model"]}).json()["data"] == []
        assert c.get("/v1/audits", params={"subject": SUBJECT["id"]}).json()["data"] == []
        body = {"model_id": ids["model"], "subject": SUBJECT, "records": [{"text": "x"}]}
        expect_error(c.post("/v1/forget-requests", json=body), 404, "not_found")
        assert "unlearnd_jobs{" not in c.get("/metrics").text  # globex has no jobs
    with client(live, acme["key"]) as c:
        assert [a["id"] for a in c.get("/v1/audits", params={"subject": SUBJECT["id"]}).json()["data"]] == [
            ids["audit"]
        ]
        assert 'unlearnd_jobs{status="failed"} 1' in c.get("/metrics").text
        assert [r["id"] for r in c.get("/v1/forget-requests").json()["data"]] == [ids["request"]]


def test_a_revoked_key_is_401(live: Live):
    key = make_key(live, "acme")
    with client(live, key) as c:
        assert c.get("/v1/audits").status_code == 200
        with transaction(sessions(live)) as session:
            revoke_api_key(session, "uk_" + key.split("_")[1])
        err = expect_error(c.get("/v1/audits"), 401, "unauthorized")
    assert "revoked" in err["message"]


def test_cli_creates_scoped_keys_of_a_tenant_and_revokes_them(live: Live, acme: dict):
    runner = CliRunner()
    env = {"UNLEARND_DATA_DIR": str(Path(live.settings.data_dir))}
    created = runner.invoke(cli_app, ["keys", "create", "--tenant", "acme", "--scopes", "audit:read"], env=env)
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[0]
    prefix = "uk_" + key.split("_")[1]
    with client(live, key) as c:
        assert c.get(f"/v1/audits/{acme['ids']['audit']}").status_code == 200  # tenant acme, audit:read
        expect_error(c.post("/v1/models", json={}), 403, "insufficient_scope")
        listed = runner.invoke(cli_app, ["keys", "list", "--tenant", "acme"], env=env)
        assert prefix in listed.stdout and key not in listed.stdout  # the secret is never shown again
        revoked = runner.invoke(cli_app, ["keys", "revoke", prefix], env=env)
        assert revoked.exit_code == 0, revoked.output
        expect_error(c.get("/v1/audits"), 401, "unauthorized")
    bad = runner.invoke(cli_app, ["keys", "create", "--scopes", "root"], env=env)
    assert bad.exit_code == 2 and "unknown scope" in bad.output
    missing = runner.invoke(cli_app, ["keys", "revoke", "uk_nothere"], env=env)
    assert missing.exit_code == 2


def test_keys_are_stored_as_hmac_with_a_visible_prefix_only(live: Live):
    key = make_key(live, "acme", ["audit:read"])
    with transaction(sessions(live)) as session:
        rows = session.execute(text("SELECT prefix, secret_hash, scopes FROM api_keys")).all()
    assert all(key not in str(tuple(r)) for r in rows)
    assert any(key.startswith(r.prefix + "_") for r in rows)
