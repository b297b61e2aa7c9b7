import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from unlearnd.api.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_api_app_import_does_not_import_torch():
    code = "import unlearnd.api.app, sys; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_cli_import_does_not_import_torch():
    code = (
        "import unlearnd.cli.service_cmds, sys; "
        "assert 'torch' not in sys.modules; assert 'unlearnd.api.app' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_embedded_defaults_need_no_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for var in ("UNLEARND_DATABASE_URL", "UNLEARND_DATA_DIR", "UNLEARND_DISPATCHER", "UNLEARND_BLOB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert s.dispatcher == "thread"
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'data' / 'unlearnd.db'}"
    assert s.resolved_blob_dir == tmp_path / "data" / "blobs"


def test_settings_read_prefixed_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("UNLEARND_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("UNLEARND_MAX_ATTEMPTS", "7")
    s = Settings()
    assert s.resolved_database_url == "postgresql+psycopg://u@h/db"
    assert s.max_attempts == 7


def test_production_refuses_the_development_secret():
    with pytest.raises(ValidationError, match="UNLEARND_SECRET_KEY"):
        Settings(environment="production")
    real = Settings(environment="production", secret_key="a-real-secret", audit_signing_key_file="/etc/k.pem")
    assert real.environment == "production"


def _docs_status(tmp_path: Path, **overrides) -> set[int]:
    """The statuses of /docs, /redoc and /openapi.json, asked without a key."""
    import anyio

    from unlearnd.api.app import create_app

    app = create_app(Settings(data_dir=tmp_path / "data", **overrides))

    async def ask() -> set[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return {(await client.get(path)).status_code for path in ("/docs", "/redoc", "/openapi.json")}

    return anyio.run(ask)


PRODUCTION = {"environment": "production", "secret_key": "a-real-secret", "audit_signing_key_file": "/etc/k.pem"}


@pytest.mark.parametrize(
    "overrides, status",
    [
        ({}, 200),  # development: the schema and its pages, without a key
        ({"api_docs": False}, 404),
        (PRODUCTION, 404),  # production: off unless the operator turns them on
        ({**PRODUCTION, "api_docs": True}, 200),
    ],
)
def test_api_docs_are_a_setting_off_by_default_in_production(tmp_path: Path, overrides: dict, status: int):
    assert _docs_status(tmp_path, **overrides) == {status}


def test_model_roots_come_from_a_path_list_or_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("UNLEARND_MODEL_ROOTS", f"/models{os.pathsep}/mnt/hf{os.pathsep}")
    assert Settings().resolved_model_roots == (Path("/models"), Path("/mnt/hf"))
    monkeypatch.setenv("UNLEARND_MODEL_ROOTS", '["/models"]')
    assert Settings().resolved_model_roots == (Path("/models"),)
    monkeypatch.delenv("UNLEARND_MODEL_ROOTS")
    assert Settings(data_dir=tmp_path).resolved_model_roots == (tmp_path / "models",)  # nothing but its own
