"""The CLI as a newcomer reads it (issue 15, item 7): help without `<bool>` or `{file}` and a description for
every command, progress that never shows `0/None` and ends on the request's status, finished requests in phase
`done`, audit ids never cut at 80 or 140 columns, and piped output never wrapped in the middle of a field."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from rich.console import Console
from typer.main import get_command
from typer.testing import CliRunner

from unlearnd import ForgetRequest
from unlearnd.cli.audit_view import audit_table
from unlearnd.cli.main import app
from unlearnd.cli.output import PIPED_WIDTH, console
from unlearnd.cli.progress import describe

from .support import ADMIN_KEY, Live, make_model_dir

runner = CliRunner()


def _commands(group=None, path=()):
    group = group or get_command(app)
    for name, cmd in group.commands.items():
        yield (*path, name), cmd
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))


COMMANDS = [" ".join(p) for p, _ in _commands()]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_description_and_plain_help(command: str):
    cmd = dict(_commands())[tuple(command.split())]
    assert (cmd.help or cmd.short_help or "").strip(), f"`unlearnd {command}` has no description"
    result = runner.invoke(app, [*command.split(), "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output and "{" not in result.output.split("Usage:")[1].splitlines()[0]


def test_a_required_argument_reads_as_its_name_in_the_usage_line():
    usage = runner.invoke(app, ["forget", "submit", "--help"], env={"COLUMNS": "200"}).output
    assert "submit [OPTIONS] FILE\n" in usage.replace(" \n", "\n").split("Usage:")[1].lstrip().split("  ")[0] + "\n"
    assert "--watch" in usage and "<bool>" not in usage


def _request(status: str, phase: str | None = None, step: int = 0, total: int = 0, **metrics) -> ForgetRequest:
    now = datetime.now(UTC).isoformat()
    return ForgetRequest.model_validate(
        {
            "id": "req_1",
            "status": status,
            "job_id": "job_1",
            "model_id": "mdl_1",
            "subject_hash": "0" * 64,
            "legal_basis": "GDPR Art. 17",
            "ticket": None,
            "record_count": 1,
            "record_hashes": [],
            "probe_count": 0,
            "config": {"auc_tolerance": 0.1},
            "progress": {"phase": phase, "step": step, "total": total, "metrics": metrics},
            "adapter_version": None,
            "audit_id": None,
            "verdict": "forgotten" if status == "succeeded" else None,
            "error": None,
            "created_at": now,
            "finished_at": None,
        }
    )


def test_progress_never_shows_none_and_names_the_target():
    queued = describe(_request("queued")).line()
    assert queued == "queued  waiting for a worker" and "None" not in queued
    assert describe(_request("running", "fisher", 0, 0)).line() == "fisher"
    checking = describe(
        _request("running", "unlearning", 12, 80, forget_ma=0.81, loss_auc=0.91, zlib_auc=0.9, failed=["ma"])
    ).line()
    assert checking.startswith("unlearning 12/80  forget MA 0.810")
    assert "AUC loss 0.91, zlib 0.90 → target 0.5±0.1" in checking and "failing: ma" in checking
    assert describe(_request("succeeded", "done", 1, 1)).line() == "succeeded (forgotten)"


def test_watching_an_unknown_request_prints_only_the_error(live: Live):
    env = {"UNLEARND_URL": live.url, "UNLEARND_API_KEY": ADMIN_KEY}
    result = runner.invoke(app, ["forget", "status", "req_missing", "--watch"], env=env)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: not_found: forget request not found"]


def test_a_finished_request_is_in_phase_done_and_the_watch_ends_on_its_status(live: Live):
    model = live.client.post(
        "/v1/models", json={"name": "newcomer", "source": make_model_dir(live.settings, "newcomer")}
    ).json()
    body = {"model_id": model["id"], "subject": {"id": "n", "legal_basis": "b"}, "records": [{"text": "x"}]}
    req = live.client.post("/v1/forget-requests", json={**body, "method": "ihl"}).raise_for_status().json()
    final = live.wait(req["id"], timeout=120)
    assert final["status"] == "failed" and final["progress"]["phase"] == "done"
    assert live.client.get(f"/v1/jobs/{req['job_id']}").json()["progress"]["phase"] == "done"
    env = {"UNLEARND_URL": live.url, "UNLEARND_API_KEY": ADMIN_KEY}
    result = runner.invoke(app, ["forget", "status", req["id"], "--watch"], env=env)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0] == "failed (failed)"  # the watch's last state, not `exporting`
    assert f"{req['id']}: failed (failed)" in result.stdout


AUDITS = [
    {
        "seq": n,
        "id": f"aud_{n:032x}",
        "request_id": f"req_{n:032x}",
        "verdict": "not_memorised",
        "completed_at": "2026-11-30T12:00:00.000000Z",
        "metrics": {"before": {"forget": {"ma": 0.97}}, "after": {"forget": {"ma": 0.40}}},
    }
    for n in (1, 12345)
]


@pytest.mark.parametrize("width", [80, 140, 200])
def test_audit_ids_are_never_cut(width: int):
    out = io.StringIO()
    Console(file=out, width=width).print(audit_table(AUDITS, width))
    lines = out.getvalue().splitlines()
    assert all(len(line) <= width for line in lines)
    for a in AUDITS:
        assert any(a["id"] in line for line in lines)
        if width >= 140:
            assert any(a["request_id"] in line for line in lines)


def test_piped_output_is_never_wrapped():
    piped = console()  # pytest's captured stdout is not a terminal
    assert not piped.is_terminal and piped.width == PIPED_WIDTH
    out = io.StringIO()
    piped.file = out
    line = "audit " + "aud_" + "f" * 32 + " · chain seq 1, hash " + "a" * 64 + " · " + "word " * 30
    piped.print(line)
    piped.print(audit_table(AUDITS, piped.width))
    text = out.getvalue()
    assert line.strip() in [row.rstrip() for row in text.splitlines()]
    assert all(any(a["id"] in row and a["request_id"] in row for row in text.splitlines()) for a in AUDITS)


def test_the_audit_view_flags_a_retain_loss_and_explains_its_terms():
    from unlearnd.cli.audit_view import print_audit

    metrics = {
        "steps": 12,
        "before": {"forget": {"ma": 0.97}, "holdout": {"ma": 0.4}, "retain": {"ma": 0.96}},
        "after": {"forget": {"ma": 0.39}, "holdout": {"ma": 0.4}, "retain": {"ma": 0.91, "extraction_short": 0.5}},
        "original": {"retain": {"ma": 0.96, "extraction_short": 0.9}},
        "verdict": {"bounds": {"max_retain_ma_drop": 0.02}, "after": {"failed": []}, "utility": {"failed": []}},
    }
    audit = {"id": "aud_x", "verdict": "model_damaged", "metrics": metrics, "seq": 3, "hash": "h" * 64}
    out = io.StringIO()
    print_audit(audit, Console(file=out, width=PIPED_WIDTH), explain=True)
    text = out.getvalue()
    assert "retain loss: retain MA 0.960 → 0.910, short-prefix extraction 0.90 → 0.50" in text
    assert "MA: memorisation accuracy" in text and "EL10: extraction likelihood" in text and "MIA AUC:" in text
    assert "Forgetting broke the model. " in text and "The retained data paid for it" in text
