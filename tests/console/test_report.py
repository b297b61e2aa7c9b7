"""The evidence report of the real finished job: self-contained, carrying the statistical evidence, the
figures, the chain position and signature, and a certificate that the printed command verifies offline."""

from __future__ import annotations

import html
import json
import re

from typer.testing import CliRunner

from tests.service.support import ADMIN_KEY
from unlearnd.api.report import evidence
from unlearnd.cli.main import app

from .conftest import Finished

runner = CliRunner()


def _report(finished: Finished):
    r = finished.live.client.get(f"/v1/audits/{finished.audit['id']}/report")
    assert r.status_code == 200, r.text
    return r


def test_the_report_is_one_self_contained_page_without_script(finished: Finished):
    r = _report(finished)
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    page = r.text
    assert page.startswith("<!doctype html>") and "@media print" in page
    assert "<script" not in page and "<link" not in page and "<img" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing loaded from anywhere
    assert not re.search(r"url\((?!#)", page)  # only references inside the page (SVG clip paths)


def test_the_report_shows_the_request_and_its_statistical_evidence(finished: Finished):
    page, audit = _report(finished).text, finished.audit
    metrics = audit["metrics"]
    for value in (
        audit["subject_hash"],
        "GDPR Art. 17",
        "DPO-4711",
        "support-bot",
        audit["model_id"],
        audit["verdict"],
    ):
        assert html.escape(value) in page
    judged = metrics["verdict"]["after"] or metrics["verdict"]["before"]
    for row in evidence.score_rows(metrics):
        t = judged["scores"][row.key]
        assert f"{evidence.fmt(t['auc'])} [{evidence.fmt(t['auc_low'])}, {evidence.fmt(t['auc_high'])}]" in page
        assert evidence.fmt_p(t["p_value"]) in page
        assert f"{t['n_forget']} / {t['n_holdout']}" in page
    for condition in judged["conditions"]:
        assert f"<code>{condition['name']}</code>" in page
    assert evidence.reading(audit) == html.unescape(re.search(r'<p class="reading">(.*?)</p>', page, re.S).group(1))
    assert f"record {audit['seq']} of the service's hash chain" in page and audit["hash"] in page


def test_the_report_draws_the_score_distributions_and_the_unlearning_curve(finished: Finished):
    page = _report(finished).text
    for figure in ("fig-scores", "fig-curve"):
        block = re.search(rf'<figure id="{figure}">(.*?)</figure>', page, re.S)
        assert block and "<svg" in block.group(1) and "<path" in block.group(1), figure
    assert 'id="fig-probes"' not in page  # the request had no probes: no empty figure


def test_the_certificate_in_the_report_verifies_with_the_printed_command(finished: Finished, tmp_path, monkeypatch):
    page = _report(finished).text
    cert = html.unescape(re.search(r'<pre id="certificate">(.*?)</pre>', page, re.S).group(1))
    commands = html.unescape(re.search(r'<pre id="verify-command">(.*?)</pre>', page, re.S).group(1)).splitlines()
    audit_id = finished.audit["id"]
    name = f"certificate-{audit_id}.json"
    assert commands[0] == f"unlearnd certificate get {audit_id} --out {name} --public-key-out audit-public.json"
    monkeypatch.chdir(tmp_path)
    env = {"UNLEARND_URL": finished.live.url, "UNLEARND_API_KEY": ADMIN_KEY}
    for command in commands[:2]:  # get, then verify: exactly as printed
        result = runner.invoke(app, command.split()[1:], env=env)
        assert result.exit_code == 0, result.output
    assert "valid: audit" in result.output
    (tmp_path / name).write_text(cert)  # the copy embedded in the report verifies too
    assert runner.invoke(app, commands[1].split()[1:], env=env).exit_code == 0
    doc = json.loads(cert)
    doc["verdict"] = "forgotten" if doc["verdict"] != "forgotten" else "not_reached"
    (tmp_path / name).write_text(json.dumps(doc))
    assert runner.invoke(app, commands[1].split()[1:], env=env).exit_code == 1


def test_cli_audits_report_saves_the_page(finished: Finished, tmp_path):
    out = tmp_path / "evidence.html"
    env = {"UNLEARND_URL": finished.live.url, "UNLEARND_API_KEY": ADMIN_KEY}
    result = runner.invoke(app, ["audits", "report", finished.audit["id"], "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("<!doctype html>") and finished.audit["hash"] in out.read_text()
