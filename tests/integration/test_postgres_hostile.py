"""Hostile inputs and the signed chain head on PostgreSQL, whose driver refuses what SQLite takes (a NUL byte
in text, an integer outside its column's range): every such value is a 4xx before it reaches psycopg. The API
runs on the module's PostgreSQL database with the thread dispatcher (no worker process needed here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text
from sqlalchemy.orm import make_transient

from tests.security.conftest import publish_request
from tests.security.test_hostile_inputs import CURSORS, DATES, SOURCES, _paginated, _tampered
from tests.service.support import Live, make_model_dir, start_live, stop_live
from unlearnd.api.db import alembic_config, transaction
from unlearnd.api.models import AuditRecord

pytestmark = pytest.mark.integration

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def live(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    lv = start_live(
        tmp_path_factory.mktemp("pg-hostile") / "data", run_jobs=False, database_url=pg_url, rate_limit_per_minute=0
    )
    yield lv
    stop_live(lv)


def _sessions(live: Live):
    return live.server.app.state.session_factory


@pytest.fixture(scope="module")
def ids(live: Live) -> dict:
    body = {"name": "pg-hostile", "source": make_model_dir(live.settings, "pg-hostile")}
    model_id = live.client.post("/v1/models", json=body).raise_for_status().json()["id"]
    request_id = publish_request(_sessions(live), live.settings, model_id, "pg-subject")
    with _sessions(live)() as session:
        job_id = session.scalar(select(AuditRecord.job_id).where(AuditRecord.request_id == request_id))
    return {"model": model_id, "job": job_id, "request": request_id}


def test_tampered_cursors_are_422_on_postgres(live: Live, ids: dict):
    for path, key, kind in _paginated(ids):
        for cursor in _tampered(key, kind):
            r = live.client.get(path, params={"cursor": cursor})
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor", (path, cursor, r.text)


def test_nul_bytes_never_reach_the_driver(live: Live, ids: dict):
    subject = {"id": "s", "legal_basis": "GDPR Art. 17"}
    source = make_model_dir(live.settings, "pg-nul")
    answers = [
        live.client.post("/v1/models", json={"name": "a\x00b", "source": source}),
        live.client.post("/v1/models", json={"name": "ok", "source": source, "revision": "\x00"}),
        live.client.post("/v1/models", json={"name": "ok", "source": "pg-\x00nul"}),
        live.client.post(
            "/v1/forget-requests",
            json={"model_id": ids["model"], "subject": {**subject, "legal_basis": "\x00"}, "records": [{"text": "r"}]},
        ),
        live.client.post(
            "/v1/forget-requests",
            json={"model_id": ids["model"], "subject": {**subject, "ticket": "T\x00"}, "records": [{"text": "r"}]},
        ),
        live.client.post("/v1/forget-requests", json={"model_id": "mdl_\x00", "subject": subject, "records": []}),
        live.client.get("/v1/models/mdl_%00"),
        live.client.get("/v1/forget-requests/req_%00x"),
        live.client.get("/v1/audits", params={"model_id": "mdl_\x00"}),
    ]
    for r in answers:
        assert 400 <= r.status_code < 500, (r.request.url, r.text)


def test_audit_dates_at_the_calendar_limits_on_postgres(live: Live, ids: dict):
    for params in (
        {"since": "0001-01-01T00:00:00+14:00"},
        {"until": "9999-12-31T23:59:59-14:00"},
        {"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T23:59:59.999999Z"},
    ):
        r = live.client.get("/v1/audits", params=params)
        assert r.status_code == 200 and r.json()["data"], (params, r.text)


def test_fuzzed_cursors_dates_and_sources_never_answer_5xx_on_postgres(live: Live, ids: dict):
    paths = [path for path, _, _ in _paginated(ids)]

    @FUZZ
    @given(cursor=CURSORS, path=st.sampled_from(paths), since=DATES, source=SOURCES)
    def fuzz(cursor: str, path: str, since: str, source: str) -> None:
        for r in (
            live.client.get(path, params={"cursor": cursor}),
            live.client.get("/v1/audits", params={"since": since, "until": since}),
            live.client.post("/v1/models", json={"name": f"fz-{abs(hash(source))}", "source": source}),
        ):
            assert r.status_code < 500, (r.request.url, r.text)

    fuzz()


def test_deleting_the_newest_record_is_found_on_postgres(live: Live, ids: dict):
    for i in range(2):
        publish_request(_sessions(live), live.settings, ids["model"], f"pg-more-{i}")
    result = live.client.get("/v1/audits/verify").json()
    assert result["ok"] is True and result["head"]["seq"] == result["total"]
    saved = live.client.get("/v1/audits/head").json()
    with transaction(_sessions(live)) as session:
        newest = session.scalar(select(AuditRecord).where(AuditRecord.seq == saved["seq"]))
        session.expunge(newest)
        make_transient(newest)
        session.execute(text("DELETE FROM audit_records WHERE seq = :s"), {"s": saved["seq"]})
    try:
        result = live.client.get("/v1/audits/verify").json()
        assert result["ok"] is False and result["missing_from_seq"] == result["missing_to_seq"] == saved["seq"]
    finally:
        with transaction(_sessions(live)) as session:
            session.add(newest)
    params = {"head_seq": saved["seq"], "head_hash": saved["hash"]}
    assert live.client.get("/v1/audits/verify", params=params).json()["ok"] is True


def test_a_populated_chain_is_migrated_and_signed_on_postgres(pg_url: str, tmp_path: Path):
    from .support import create_database, drop_database

    name = f"{pg_url.rsplit('/', 1)[1]}_heads"
    url = create_database(name)
    try:
        first = start_live(tmp_path / "data", run_jobs=False, database_url=url)
        try:
            body = {"name": "old", "source": make_model_dir(first.settings, "old"), "retain": [{"text": "kept"}]}
            model_id = first.client.post("/v1/models", json=body).raise_for_status().json()["id"]
            for i in range(2):
                publish_request(_sessions(first), first.settings, model_id, f"old-{i}")
        finally:
            stop_live(first)
        cfg = alembic_config(url)
        command.downgrade(cfg, "0003")
        command.upgrade(cfg, "head")
        second = start_live(tmp_path / "data", database_url=url)
        try:
            assert second.client.get("/v1/audits/verify").json()["ok"] is True
            assert second.client.get("/v1/audits/head").json()["seq"] == 2
            assert second.client.get(f"/v1/models/{model_id}").json()["retain_count"] == 1
        finally:
            stop_live(second)
    finally:
        drop_database(name)
