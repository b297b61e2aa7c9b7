import os
import tarfile
from pathlib import Path

import pytest
from sqlalchemy import text

from unlearnd.api import audit
from unlearnd.api.archive import file_sha256, pack_dir, unpack
from unlearnd.api.db import transaction
from unlearnd.api.models import AuditRecord, Job, utcnow
from unlearnd.api.security import ensure_tenant

from .support import add_model_row


def _adapter_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text('{"r": 8}')
    (root / "adapter_model.safetensors").write_bytes(os.urandom(2048))
    return root


def test_pack_is_deterministic_whatever_the_mtimes(tmp_path: Path):
    src = _adapter_dir(tmp_path / "a")
    sha1, size1 = pack_dir(src, tmp_path / "one.tar.gz")
    for p in src.iterdir():
        os.utime(p, (1_000_000, 1_000_000))
    sha2, size2 = pack_dir(src, tmp_path / "two.tar.gz")
    assert (sha1, size1) == (sha2, size2)
    assert sha1 == file_sha256(tmp_path / "one.tar.gz")
    out = unpack(tmp_path / "one.tar.gz", tmp_path / "out")
    assert (out / "adapter_config.json").read_text() == '{"r": 8}'
    assert (out / "adapter_model.safetensors").read_bytes() == (src / "adapter_model.safetensors").read_bytes()


def test_unpack_refuses_paths_outside_the_target(tmp_path: Path):
    evil = tmp_path / "evil.tar.gz"
    payload = tmp_path / "x"
    payload.write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(payload, arcname="../escaped")
    with pytest.raises(tarfile.TarError):
        unpack(evil, tmp_path / "target")
    assert not (tmp_path / "escaped").exists()


def _append(session, tenant_id: str, model_id: str, job_id: str, request_id: str) -> AuditRecord:
    now = utcnow()
    return audit.append(
        session,
        AuditRecord(
            tenant_id=tenant_id,
            request_id=request_id,
            model_id=model_id,
            job_id=job_id,
            subject_hash="s" * 64,
            legal_basis="GDPR Art. 17",
            record_hashes=["h1"],
            verdict="forgotten",
            method="ihl",
            metrics={"after": {"forget": {"ma": 0.5, "nan": float("nan")}}},
            thresholds={"ma": 0.6},
            requested_at=now,
            completed_at=now,
        ),
    )


def test_chain_verifies_and_a_tampered_row_is_found(rt):
    from unlearnd.api.models import ForgetRequest, JobRequest

    with transaction(rt.sessions) as session:
        tenant_id = ensure_tenant(session).id
    model_id = add_model_row(rt, "/nowhere", tenant_id)
    with transaction(rt.sessions) as session:
        for _ in range(3):
            job = Job(tenant_id=tenant_id, model_id=model_id)
            req = ForgetRequest(
                tenant_id=tenant_id,
                model_id=model_id,
                subject_hash="s" * 64,
                legal_basis="x",
                record_salt="salt",
                record_count=1,
            )
            session.add_all([job, req])
            session.flush()
            session.add(JobRequest(job_id=job.id, request_id=req.id))
            record = _append(session, tenant_id, model_id, job.id, req.id)
        assert record.seq == 3
        assert record.metrics["after"]["forget"]["nan"] is None  # JSON has no NaN
    with transaction(rt.sessions) as session:
        result = audit.verify_chain(session)
    assert result["ok"] and result["checked"] == 3 and result["first_broken_seq"] is None
    with transaction(rt.sessions) as session:
        session.execute(text("UPDATE audit_records SET verdict = 'not_reached' WHERE seq = 2"))
    with transaction(rt.sessions) as session:
        result = audit.verify_chain(session)
    assert not result["ok"]
    assert result["first_broken_seq"] == 2
    assert "content" in result["reason"]
