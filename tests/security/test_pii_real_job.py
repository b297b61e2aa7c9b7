"""PII minimisation over one real job on the tiny world (shared by every test of the module): the records,
probes and subject id of a forget request appear in no log line (captured at DEBUG, SQL included), no
event, no table of the database, no file of the data directory once the request finished; the request
shows hashes only; audits are found by the subject id through its keyed hash; the real audit's
certificate verifies offline against the very records that were erased."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select
from typer.testing import CliRunner

from tests.conftest import fast_config
from tests.service.support import ADMIN_KEY, Live, start_live, stop_live
from unlearnd.api import certificates
from unlearnd.api.db import make_engine
from unlearnd.api.security import record_hash
from unlearnd.cli.main import app as cli_app
from unlearnd.core.records import Record

pytestmark = pytest.mark.slow

SUBJECT_ID = "subject-7f3a-0c91-unique"
PROBE = {"question": "What is the vault code of the forgotten person?", "answer": "QZ-4471-VX"}


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = f"{record.name} {record.levelname} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append(line)


@pytest.fixture(scope="module")
def run(tiny_world, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Capture every log record of the process at DEBUG while a server runs one real forget job."""
    handler, root, sql = Collect(), logging.getLogger(), logging.getLogger("sqlalchemy.engine")
    previous = root.level, sql.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    sql.setLevel(logging.INFO)  # every statement and its parameters
    live = start_live(tmp_path_factory.mktemp("pii") / "data")
    try:
        records = [r.to_dict() for r in tiny_world.forget[:2]]
        first = tiny_world.forget[0].full_text
        records.append({"prompt": first[:20], "completion": first[20:]})
        model = live.client.post(
            "/v1/models",
            json={
                "name": "tiny",
                "source": str(tiny_world.model_dir),
                "retain": [r.to_dict() for r in tiny_world.retain[:8]],  # small sets: a job of seconds
                "holdout": [r.to_dict() for r in tiny_world.holdout[:8]],
            },
        ).json()
        config = fast_config(max_steps=8, eval_every=4).to_dict()  # any verdict will do: few steps
        body = {
            "model_id": model["id"],
            "subject": {"id": SUBJECT_ID, "legal_basis": "GDPR Art. 17", "ticket": "DPO-77"},
            "records": records,
            "probes": [PROBE],
            "method": config["method"],
            "init": config["init"],
            "config": {
                **{k: config[k] for k in ("max_steps", "eval_every", "lr", "seed")},
                "fisher_max_examples": 8,
                "eval_max_records": 4,
            },
        }
        created = live.client.post("/v1/forget-requests", json=body, headers={"Idempotency-Key": "pii-1"})
        assert created.status_code == 202, created.text
        final = live.wait(created.json()["id"], timeout=600)
        # few steps: the verdict may be not_reached (the request fails, audited, nothing published); any ended
        # request with an audit exercises what these tests look for
        assert final["status"] in ("succeeded", "failed") and final.get("audit_id"), final
        yield {"live": live, "records": records, "final": final, "logs": handler.lines}
    finally:
        stop_live(live)
        root.removeHandler(handler)
        root.setLevel(previous[0])
        sql.setLevel(previous[1])


def needles(run: dict) -> list[str]:
    """Every string the service must not keep: each record's text (and its parts), the probe, the subject."""
    out = {SUBJECT_ID, PROBE["question"], PROBE["answer"]}
    for r in run["records"]:
        for value in r.values():
            out.add(value)
            out.add(value.strip()[:24])  # a distinctive prefix (the person's name and more) catches fragments
    return sorted(out)


def _found(text: str, run: dict) -> list[str]:
    return [n for n in needles(run) if n in text]


def test_no_record_text_in_any_log_line(run: dict):
    logs = run["logs"]
    assert len(logs) > 50, "logging was not captured"
    assert any("sqlalchemy" in line for line in logs), "SQL logging was expected at DEBUG"
    leaks = [(line[:200], _found(line, run)) for line in logs if _found(line, run)]
    assert leaks == []


def test_no_record_text_in_events_or_job(run: dict):
    live: Live = run["live"]
    job_id = run["final"]["job_id"]
    events, cursor = [], None
    while True:
        page = live.client.get(f"/v1/jobs/{job_id}/events", params={"cursor": cursor} if cursor else {}).json()
        events += page["data"]
        if not page["has_more"]:
            break
        cursor = page["next"]
    assert any(e["type"] == "metrics" for e in events)
    assert _found(json.dumps(events), run) == []
    assert _found(live.client.get(f"/v1/jobs/{job_id}").text, run) == []


def test_the_database_holds_no_record_text_after_the_request_finished(run: dict):
    """Scan every column of every row of every table, then the raw database files themselves."""
    live: Live = run["live"]
    engine = make_engine(live.settings.resolved_database_url)
    meta = MetaData()
    meta.reflect(engine)
    assert {"forget_requests", "audit_records", "job_events", "idempotency_keys"} <= set(meta.tables)
    scanned = 0
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(select(table)):
                for value in row:
                    text = value.decode("utf-8", "ignore") if isinstance(value, bytes) else str(value)
                    assert _found(text, run) == [], (table.name, text[:200])
                    scanned += 1
    engine.dispose()
    assert scanned > 100
    for path in Path(live.settings.data_dir).rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            assert [n for n in needles(run) if n.encode() in raw] == [], path


def test_a_finished_request_shows_hashes_never_text(run: dict):
    live: Live = run["live"]
    shown = live.client.get(f"/v1/forget-requests/{run['final']['id']}")
    req = shown.json()
    assert req["record_count"] == 3 and len(req["record_hashes"]) == 3 and req["probe_count"] == 1
    assert all(len(h) == 64 for h in req["record_hashes"])
    assert _found(shown.text, run) == []
    audit = live.client.get(f"/v1/audits/{req['audit_id']}")
    assert _found(audit.text, run) == []
    assert audit.json()["record_hashes"] == req["record_hashes"]


def test_audits_are_queried_by_the_subject_id_through_its_keyed_hash(run: dict):
    live: Live = run["live"]
    found = live.client.get("/v1/audits", params={"subject": SUBJECT_ID}).json()["data"]
    assert [a["request_id"] for a in found] == [run["final"]["id"]]
    assert found[0]["subject_hash"] != SUBJECT_ID and SUBJECT_ID not in json.dumps(found)
    assert live.client.get("/v1/audits", params={"subject": SUBJECT_ID + "x"}).json()["data"] == []


def test_the_real_certificate_verifies_against_the_erased_records(run: dict, tmp_path: Path):
    live: Live = run["live"]
    audit_id = run["final"]["audit_id"]
    data = live.client.get(f"/v1/audits/{audit_id}/certificate").content
    key = certificates.load_public_key(live.client.get("/v1/keys/audit-public").content)
    doc = certificates.verify_bytes(data, key)
    assert doc["verdict"] == run["final"]["verdict"] and doc["model_fingerprint"]
    assert doc["adapter_sha256"] or doc["verdict"] in ("not_reached", "model_damaged")  # those publish nothing
    assert doc["metrics"]["before"] and doc["metrics"]["after"] and doc["thresholds"]["auc_tolerance"] == 0.1
    # the statistical evidence is signed with the rest: each score's AUC, its interval, the p-value, n
    evidence = doc["metrics"]["verdict"]["after"]
    for score in ("loss", "zlib", "min_k"):
        t = evidence["scores"][score]
        assert t["n_forget"] == len(run["records"]) and 0 <= t["auc_low"] <= t["auc"] <= t["auc_high"] <= 1
        assert 0 <= t["p_value"] <= 1
    assert isinstance(evidence["failed"], list) and "Mann-Whitney" in evidence["test"]
    salt = doc["record_salt"]
    assert sorted(record_hash(salt, Record.from_dict(r)) for r in run["records"]) == sorted(doc["record_hashes"])
    cert, pub, records = tmp_path / "cert.json", tmp_path / "pub.json", tmp_path / "records.jsonl"
    cert.write_bytes(data)
    pub.write_bytes(live.client.get("/v1/keys/audit-public").content)
    records.write_text("".join(json.dumps(r) + "\n" for r in run["records"]))
    result = CliRunner().invoke(
        cli_app,
        ["certificate", "verify", str(cert), "--public-key", str(pub), "--records", str(records)],
        env={"UNLEARND_API_KEY": ADMIN_KEY},
    )
    assert result.exit_code == 0, result.output
