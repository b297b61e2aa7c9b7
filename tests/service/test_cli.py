"""The service commands of `unlearnd`, through typer's runner against a live server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cli.main import app

from .support import ADMIN_KEY, Live

runner = CliRunner()


def _run(live: Live | None, *args: str, env: dict | None = None):
    base = {"UNLEARND_URL": live.url, "UNLEARND_API_KEY": ADMIN_KEY} if live else {}
    return runner.invoke(app, list(args), env={**base, **(env or {})})


def test_keys_create_prints_a_working_key(live: Live):
    result = _run(None, "keys", "create", "--name", "ci", env={"UNLEARND_DATA_DIR": str(live.settings.data_dir)})
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[0]
    assert key.startswith("uk_")
    r = httpx.get(f"{live.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200


def test_api_errors_exit_2_with_their_code(live: Live):
    result = _run(live, "forget", "status", "req_missing")
    assert result.exit_code == 2
    assert "not_found" in result.output
    result = _run(live, "audits", "list", env={"UNLEARND_API_KEY": "wrong"})
    assert result.exit_code == 2 and "unauthorized" in result.output


def test_unreachable_server_exits_1():
    result = runner.invoke(app, ["audits", "list"], env={"UNLEARND_URL": "http://127.0.0.1:9", "UNLEARND_API_KEY": "k"})
    assert result.exit_code == 1 and "unreachable" in result.output


def test_bad_forget_file_exits_2(live: Live, tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"nope": 1}\n')
    result = _run(live, "forget", "submit", str(bad), "--model", "mdl_x", "--subject", "s")
    assert result.exit_code == 2 and "unknown record field" in result.output


@pytest.mark.slow
def test_cli_round_trip_submit_watch_download_audit(live: Live, service_world, job_config: dict, tmp_path: Path):
    result = _run(
        live,
        "models",
        "add",
        "cli-tiny",
        str(service_world.model_dir),
        "--retain",
        str(service_world.retain_path),
        "--holdout",
        str(service_world.holdout_path),
    )
    assert result.exit_code == 0, result.output
    model_id = result.stdout.strip()
    assert model_id.startswith("mdl_")
    result = _run(
        live,
        "forget",
        "submit",
        str(service_world.forget_path),
        "--model",
        model_id,
        "--subject",
        "cli-person",
        "--ticket",
        "T-9",
        "--max-steps",
        str(job_config["config"]["max_steps"]),
        "--watch",
    )
    assert result.exit_code == 0, result.output
    request_id = result.stdout.strip().splitlines()[0]
    assert f"{request_id}: succeeded (forgotten)" in result.stdout

    status = _run(live, "forget", "status", request_id)
    assert status.exit_code == 0 and '"status": "succeeded"' in status.stdout
    adapter_id = live.client.get(f"/v1/forget-requests/{request_id}").json()["adapter_version"]["id"]
    out = tmp_path / "adapter"
    result = _run(live, "adapters", "download", adapter_id, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "verified" in result.stdout and (out / "adapter_config.json").is_file()
    sha = live.client.get(f"/v1/adapters/{adapter_id}").json()["sha256"]
    assert sha in result.stdout.replace("\n", "")
    assert hashlib.sha256(live.client.get(f"/v1/adapters/{adapter_id}/download").content).hexdigest() == sha

    result = _run(live, "audits", "list", "--subject", "cli-person", "--json")
    assert result.exit_code == 0 and request_id in result.stdout and '"verdict": "forgotten"' in result.stdout
    assert _run(live, "audits", "verify").exit_code == 0
