"""The signed chain head: deleting the newest audit records is found (with the missing range), a head saved
outside the service catches a rollback, heads verify offline, and a chain older than heads is adopted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text
from typer.testing import CliRunner

from tests.service.support import ADMIN_KEY, Live, make_model_dir, start_live, stop_live
from unlearnd.api import certificates, chain_head
from unlearnd.api.db import alembic_config, transaction
from unlearnd.cli.main import app as cli_app

from .conftest import publish_request, sessions


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """Its own server: these tests delete and put back audit records."""
    lv = start_live(tmp_path_factory.mktemp("chain-head") / "data", run_jobs=False)
    yield lv
    stop_live(lv)


@pytest.fixture(scope="module")
def model_id(live: Live) -> str:
    body = {"name": "head", "source": make_model_dir(live.settings, "head")}
    return live.client.post("/v1/models", json=body).raise_for_status().json()["id"]


def _publish(live: Live, model_id: str, n: int) -> None:
    for _ in range(n):
        publish_request(sessions(live), live.settings, model_id, "head-subject")


def _verify(live: Live, **params) -> dict:
    return live.client.get("/v1/audits/verify", params=params).raise_for_status().json()


def _public_key(live: Live):
    return certificates.load_public_key(live.client.get("/v1/keys/audit-public").content)


def _sql(live: Live, statement: str, **params) -> None:
    with transaction(sessions(live)) as session:
        session.execute(text(statement), params)


def _rows(live: Live, table: str) -> list[dict]:
    with sessions(live)() as session:
        return [dict(r._mapping) for r in session.execute(text(f"SELECT * FROM {table}"))]


def _put_back(live: Live, audits: list[dict], head: list[dict]) -> None:
    """Restore the audit table and the head as they were (what the insider deleted)."""
    _sql(live, "DELETE FROM audit_head")
    _sql(live, "DELETE FROM audit_records")
    with transaction(sessions(live)) as session:
        for table, rows in (("audit_records", audits), ("audit_head", head)):
            for row in rows:
                columns = ", ".join(row)
                values = ", ".join(f":{c}" for c in row)
                session.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({values})"), row)


@pytest.fixture
def snapshot(live: Live, model_id: str) -> Iterator[None]:
    """Three or more records; whatever a test deletes is put back afterwards."""
    _publish(live, model_id, 3)
    audits, head = _rows(live, "audit_records"), _rows(live, "audit_head")
    yield
    _put_back(live, audits, head)
    assert _verify(live)["ok"] is True


def test_each_append_signs_a_head_that_verifies_offline(live: Live, snapshot):
    head = live.client.get("/v1/audits/head").raise_for_status().json()
    total = _verify(live)["total"]
    assert head["seq"] == total and head["format"] == "unlearnd-chain-head/1"
    assert chain_head.verify(head, _public_key(live)) == head
    newest = live.client.get("/v1/audits", params={"limit": 1}).json()["data"][0]
    assert (newest["seq"], newest["hash"]) == (head["seq"], head["hash"])
    for forged in ({**head, "seq": head["seq"] - 1}, {**head, "hash": "0" * 64}):
        with pytest.raises(certificates.CertificateError):
            chain_head.verify(forged, _public_key(live))


def test_deleting_the_newest_records_is_reported_with_the_missing_range(live: Live, snapshot):
    total = _verify(live)["total"]
    _sql(live, "DELETE FROM audit_records WHERE seq = :s", s=total)
    result = _verify(live)
    assert result["ok"] is False and result["checked"] == total - 1
    assert (result["missing_from_seq"], result["missing_to_seq"], result["first_broken_seq"]) == (total, total, total)
    assert f"record {total} is missing" in result["reason"]
    _sql(live, "DELETE FROM audit_records WHERE seq >= :s", s=total - 2)
    result = _verify(live)
    assert (result["missing_from_seq"], result["missing_to_seq"]) == (total - 2, total)


def test_a_gap_in_the_middle_is_reported_with_its_range(live: Live, snapshot):
    total = _verify(live)["total"]
    _sql(live, "DELETE FROM audit_records WHERE seq IN (:a, :b)", a=total - 2, b=total - 1)
    result = _verify(live)
    assert result["ok"] is False and (result["missing_from_seq"], result["missing_to_seq"]) == (total - 2, total - 1)


def test_a_deleted_or_unsigned_head_is_reported(live: Live, snapshot):
    _sql(live, "UPDATE audit_head SET seq = seq - 1")  # an edited head: its signature no longer matches
    assert "does not verify" in _verify(live)["reason"]
    _sql(live, "DELETE FROM audit_head")
    result = _verify(live)
    assert result["ok"] is False and result["reason"] == "the signed chain head is missing"


def test_a_rollback_to_an_older_head_is_caught_by_the_head_the_customer_saved(live: Live, model_id: str, snapshot):
    older = live.client.get("/v1/audits/head").json()
    older_row = _rows(live, "audit_head")
    _publish(live, model_id, 2)
    saved = live.client.get("/v1/audits/head").json()  # what the customer keeps outside the service
    assert _verify(live, head_seq=saved["seq"], head_hash=saved["hash"])["ok"] is True
    # the insider deletes the two newest records and puts the older signed head back: consistent in itself
    _sql(live, "DELETE FROM audit_records WHERE seq > :s", s=older["seq"])
    _sql(live, "DELETE FROM audit_head")
    with transaction(sessions(live)) as session:
        row = older_row[0]
        session.execute(text("INSERT INTO audit_head VALUES (:id, :seq, :hash, :signed_at, :key_id, :signature)"), row)
    assert _verify(live)["ok"] is True  # the service alone cannot tell...
    result = _verify(live, head_seq=saved["seq"], head_hash=saved["hash"])  # ...the saved head can
    assert result["ok"] is False
    assert (result["missing_from_seq"], result["missing_to_seq"]) == (older["seq"] + 1, saved["seq"])
    assert "saved head" in result["reason"]
    # new records take the lost seqs: the saved head's seq exists again, with another hash
    _publish(live, model_id, 2)
    result = _verify(live, head_seq=saved["seq"], head_hash=saved["hash"])
    assert result["ok"] is False and result["first_broken_seq"] == saved["seq"]
    assert "not the one your saved head names" in result["reason"]


def test_a_saved_head_needs_both_its_seq_and_hash(live: Live, snapshot):
    r = live.client.get("/v1/audits/verify", params={"head_seq": 1})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    r = live.client.get("/v1/audits/verify", params={"head_seq": 1, "head_hash": "xyz"})
    assert r.status_code == 422


def test_cli_saves_a_head_and_verifies_the_chain_against_it(live: Live, snapshot, tmp_path: Path):
    runner = CliRunner()
    env = {"UNLEARND_URL": live.url, "UNLEARND_API_KEY": ADMIN_KEY}
    public = tmp_path / "audit-public.json"
    public.write_bytes(live.client.get("/v1/keys/audit-public").content)
    saved = tmp_path / "head.json"
    result = runner.invoke(cli_app, ["audits", "head", "--out", str(saved)], env=env)
    assert result.exit_code == 0, result.output
    verify = ["audits", "verify", "--head", str(saved), "--public-key", str(public)]
    result = runner.invoke(cli_app, verify, env=env)
    assert result.exit_code == 0, result.output
    head = json.loads(saved.read_text())
    _sql(live, "DELETE FROM audit_records WHERE seq = :s", s=head["seq"])
    result = runner.invoke(cli_app, verify, env=env)
    assert result.exit_code == 1 and '"missing_from_seq"' in result.stdout
    (tmp_path / "forged.json").write_text(json.dumps({**head, "seq": head["seq"] - 1}))
    forged = ["audits", "verify", "--head", str(tmp_path / "forged.json"), "--public-key", str(public)]
    result = runner.invoke(cli_app, forged, env=env)
    assert result.exit_code == 1 and "INVALID" in result.output


def test_a_chain_older_than_signed_heads_is_signed_at_the_next_start(tmp_path: Path):
    data = tmp_path / "data"
    first = start_live(data, run_jobs=False)
    try:
        body = {"name": "old", "source": make_model_dir(first.settings, "old")}
        model_id = first.client.post("/v1/models", json=body).raise_for_status().json()["id"]
        _publish(first, model_id, 2)
        cfg = alembic_config(first.settings.resolved_database_url)
    finally:
        stop_live(first)
    command.downgrade(cfg, "0003")  # the schema before signed heads (and set summaries), two records
    command.upgrade(cfg, "head")  # the migration leaves an unsigned head at the chain's end
    second = start_live(data)
    try:
        head = second.client.get("/v1/audits/head").raise_for_status().json()
        assert head["seq"] == 2 and head["signature"] is not None
        assert _verify(second)["ok"] is True
        model = second.client.get(f"/v1/models/{model_id}").json()
        assert model["retain_count"] == 0 and len(model["retain_sha256"]) == 64  # filled by the migration
    finally:
        stop_live(second)
