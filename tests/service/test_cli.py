"""The service commands of `unlearnd`, through typer's runner against a live server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from unlearnd.cli.main import app

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


def test_keys_commands_refuse_a_directory_without_the_servers_database(tmp_path: Path):
    """Run from elsewhere (no UNLEARND_DATA_DIR), `keys create` used to make a new database in ./data and
    print a key the server rejects; now it refuses, and creates nothing."""
    empty = tmp_path / "not-the-server"
    for args in (["keys", "create", "--name", "lost"], ["keys", "list"], ["keys", "revoke", "uk_00000000"]):
        result = runner.invoke(app, args, env={"UNLEARND_DATA_DIR": str(empty)})
        assert result.exit_code == 2, result.output
        assert "no unlearnd database at sqlite:///" in result.output and "UNLEARND_DATA_DIR" in result.output
        assert "uk_" not in result.stdout
    assert not empty.exists()  # not even the directory


def test_keys_create_says_which_database_the_key_went_into(live: Live):
    result = _run(None, "keys", "create", "--name", "where", env={"UNLEARND_DATA_DIR": str(live.settings.data_dir)})
    assert result.exit_code == 0, result.output
    assert f"in the database {live.settings.resolved_database_url}" in result.stderr


CLIENT_COMMANDS = [
    ["certificate", "get", "aud_x", "--out", "cert.json"],
    ["models", "list"],
    ["models", "add", "m", "src"],
    ["forget", "status", "req_x"],
    ["forget", "cancel", "req_x"],
    ["adapters", "list", "mdl_x"],
    ["adapters", "download", "adp_x", "--out", "adapter"],
    ["audits", "list"],
    ["audits", "show", "aud_x"],
    ["audits", "verify"],
    ["audits", "head"],
]


@pytest.mark.parametrize("args", CLIENT_COMMANDS, ids=[" ".join(a[:2]) for a in CLIENT_COMMANDS])
def test_every_client_command_with_the_server_unreachable_prints_one_line_and_exits_1(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)  # where --out files would go
    result = runner.invoke(app, args, env={"UNLEARND_URL": "http://127.0.0.1:9", "UNLEARND_API_KEY": "k"})
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unreachable: cannot reach http://127.0.0.1:9"), lines
