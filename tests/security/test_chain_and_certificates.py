"""The tamper-evident audit chain (a direct database edit is found, at its seq) and signed certificates
(Ed25519; verified offline; one changed byte of content fails), without training a model: requests are
published through the worker's real publication code with a made-up report."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError
from sqlalchemy import text
from typer.testing import CliRunner

from tests.service.support import ADMIN_KEY, Live, make_model_dir, start_live, stop_live
from unlearnd.api import certificates
from unlearnd.api.db import transaction
from unlearnd.api.settings import Settings
from unlearnd.cli.main import app as cli_app

from .conftest import RECORDS, expect_error, publish_request, sessions


@pytest.fixture(scope="module")
def published(live: Live, tmp_path_factory: pytest.TempPathFactory) -> dict:
    source = make_model_dir(live.settings, "cert")
    model_id = live.client.post("/v1/models", json={"name": "cert", "source": source}).json()["id"]
    request_ids = [publish_request(sessions(live), live.settings, model_id, f"subject-{i}") for i in range(3)]
    audits = [live.client.get(f"/v1/forget-requests/{r}").json()["audit_id"] for r in request_ids]
    return {"model_id": model_id, "requests": request_ids, "audits": audits}


def _public_key(live: Live):
    return certificates.load_public_key(live.client.get("/v1/keys/audit-public").content)


def _certificate(live: Live, audit_id: str) -> bytes:
    r = live.client.get(f"/v1/audits/{audit_id}/certificate")
    assert r.status_code == 200, r.text
    return r.content


# --- the chain ---------------------------------------------------------------------------------------------


def test_a_direct_database_edit_is_found_at_its_seq(live: Live, published: dict):
    assert live.client.get("/v1/audits/verify").json()["ok"] is True
    seq = live.client.get(f"/v1/audits/{published['audits'][1]}").json()["seq"]
    with transaction(sessions(live)) as session:
        original = session.execute(text("SELECT verdict, hash FROM audit_records WHERE seq = :s"), {"s": seq}).one()
        session.execute(text("UPDATE audit_records SET verdict = 'failed' WHERE seq = :s"), {"s": seq})
    try:
        result = live.client.get("/v1/audits/verify").json()
        assert result["ok"] is False and result["first_broken_seq"] == seq
        assert "content" in result["reason"]
        # a forger who also recomputes the edited record's hash breaks the link of the next one instead
        with transaction(sessions(live)) as session:
            session.execute(text("UPDATE audit_records SET hash = :h WHERE seq = :s"), {"h": "b" * 64, "s": seq})
        result = live.client.get("/v1/audits/verify").json()
        assert result["ok"] is False and result["first_broken_seq"] in (seq, seq + 1)
    finally:
        with transaction(sessions(live)) as session:
            session.execute(
                text("UPDATE audit_records SET verdict = :v, hash = :h WHERE seq = :s"),
                {"v": original.verdict, "h": original.hash, "s": seq},
            )
    assert live.client.get("/v1/audits/verify").json()["ok"] is True


def test_finished_requests_keep_hashes_only(live: Live, published: dict):
    req = live.client.get(f"/v1/forget-requests/{published['requests'][0]}").json()
    assert req["status"] == "succeeded" and len(req["record_hashes"]) == 2
    assert "Quentin" not in json.dumps(req)
    with transaction(sessions(live)) as session:
        row = session.execute(
            text("SELECT payload, payload_purged_at FROM forget_requests WHERE id = :r"), {"r": req["id"]}
        ).one()
    assert row.payload is None and row.payload_purged_at is not None


# --- certificates ------------------------------------------------------------------------------------------


def test_certificate_carries_the_evidence_and_verifies(live: Live, published: dict):
    audit_id = published["audits"][0]
    doc = certificates.verify_bytes(_certificate(live, audit_id), _public_key(live))
    audit = live.client.get(f"/v1/audits/{audit_id}").json()
    for field in ("request_id", "subject_hash", "record_hashes", "model_fingerprint", "adapter_sha256", "verdict"):
        assert doc[field] == audit[field], field
    assert doc["metrics"]["before"]["forget"]["ma"] == 0.9 and doc["metrics"]["after"]["forget"]["el10"] == 1e-05
    assert doc["metrics"]["after"]["mia"]["loss_auc"] is None  # NaN has no JSON form
    assert doc["thresholds"] == {"ma": 0.3, "el": 0.05}
    assert (doc["seq"], doc["prev_hash"], doc["hash"]) == (audit["seq"], audit["prev_hash"], audit["hash"])
    assert doc["adapter_version"] == 1 and doc["completed_at"] and doc["issued_at"]
    assert doc["signature"]["alg"] == "Ed25519"


def _changed(data: bytes, i: int) -> bytes:
    c = chr(data[i])
    new = str((int(c) + 1) % 10) if c.isdigit() else ("x" if c != "x" else "y")
    return data[:i] + new.encode() + data[i + 1 :]


def test_one_changed_byte_fails_the_signature(live: Live, published: dict):
    data = _certificate(live, published["audits"][1])
    key = _public_key(live)
    original = json.loads(data)
    checked = 0
    for i in range(len(data)):
        tampered = _changed(data, i)
        try:
            if json.loads(tampered) == original:  # e.g. 0.30000000000000004 → …5 is the same double
                continue
        except ValueError:
            pass
        with pytest.raises(certificates.CertificateError):
            certificates.verify_bytes(tampered, key)
        checked += 1
    assert checked > len(data) * 0.95


def test_another_key_or_a_resigned_forgery_fails(live: Live, published: dict):
    data = _certificate(live, published["audits"][2])
    other = Ed25519PrivateKey.generate()
    with pytest.raises(certificates.CertificateError, match="signed by key"):
        certificates.verify_bytes(data, other.public_key())
    # a forger with their own key cannot pass it off under the service's key id either
    doc = json.loads(data)
    doc["verdict"] = "forgotten" if doc["verdict"] != "forgotten" else "failed"
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    doc["signature"]["value"] = base64.b64encode(other.sign(certificates.canonical(unsigned))).decode()
    with pytest.raises(certificates.CertificateError, match="does not match"):
        certificates.verify(doc, _public_key(live))


def test_cli_verifies_offline_and_fails_after_one_changed_byte(live: Live, published: dict, tmp_path: Path):
    runner = CliRunner()
    cert, pub = tmp_path / "cert.json", tmp_path / "audit-public.json"
    env = {"UNLEARND_URL": live.url, "UNLEARND_API_KEY": ADMIN_KEY}
    args = ["certificate", "get", published["audits"][0], "--out", str(cert), "--public-key-out", str(pub)]
    got = runner.invoke(cli_app, args, env=env)
    assert got.exit_code == 0, got.output
    verify = ["certificate", "verify", str(cert), "--public-key", str(pub)]
    ok = runner.invoke(cli_app, verify)
    assert ok.exit_code == 0 and "valid" in ok.stdout, ok.output
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    mine = runner.invoke(cli_app, [*verify, "--records", str(records)])
    assert mine.exit_code == 0, mine.output
    records.write_text(json.dumps({"text": "Someone else entirely."}) + "\n")
    wrong = runner.invoke(cli_app, [*verify, "--records", str(records)])
    assert wrong.exit_code == 1 and "do not hash" in wrong.output
    data = cert.read_bytes()
    i = data.index(b'"subject_hash":"') + len(b'"subject_hash":"')
    cert.write_bytes(_changed(data, i))
    bad = runner.invoke(cli_app, verify)
    assert bad.exit_code == 1 and "INVALID" in bad.output


def test_public_key_endpoint_and_key_file(live: Live):
    doc = live.client.get("/v1/keys/audit-public").json()
    path = live.settings.resolved_signing_key_file
    assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600  # generated on first start (dev)
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert certificates.key_id(private.public_key()) == doc["key_id"]
    assert base64.b64decode(doc["public_key"]) == certificates.raw_public(private.public_key())
    assert certificates.load_public_key(doc["pem"].encode()).public_bytes_raw() == base64.b64decode(doc["public_key"])


def test_certificates_of_another_tenant_or_unknown_audits_are_404(live: Live):
    expect_error(live.client.get("/v1/audits/aud_missing/certificate"), 404, "not_found")


def test_the_signing_key_survives_a_restart_and_is_required_in_production(tmp_path: Path):
    first = start_live(tmp_path / "data")
    try:
        key_id = first.client.get("/v1/keys/audit-public").json()["key_id"]
    finally:
        stop_live(first)
    again = start_live(tmp_path / "data")
    try:
        assert again.client.get("/v1/keys/audit-public").json()["key_id"] == key_id
    finally:
        stop_live(again)
    with pytest.raises(ValidationError, match="AUDIT_SIGNING_KEY"):
        Settings(environment="production", secret_key="real")
    prod = Settings(environment="production", secret_key="real", audit_signing_key_file=tmp_path / "absent.pem")
    with pytest.raises(certificates.SigningKeyMissing):
        certificates.load_signing_key(prod)
    assert not (tmp_path / "absent.pem").exists()  # never generated outside development
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    configured = Settings(environment="production", secret_key="real", audit_signing_key=pem.decode())
    assert isinstance(certificates.load_signing_key(configured), Ed25519PrivateKey)
