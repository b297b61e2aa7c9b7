"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the services exist, their
commands are real entry points, every UNLEARND_* variable is a real setting (and the API's environment
validates), and the API image installs no ML stack."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from unlearnd.api.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} → default, ${VAR:?error} → a stand-in, ${VAR} → ''."""

    def one(m: re.Match) -> str:
        op, arg = m.group(2), m.group(3) or ""
        return arg if op == ":-" else ("stand-in-" + m.group(1).lower() if op == ":?" else "")

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, str(value))


def _env(service: dict) -> dict[str, str]:
    return {k: _interpolate(v) for k, v in (service.get("environment") or {}).items()}


def test_compose_has_the_production_services(compose: dict):
    services = compose["services"]
    assert {"postgres", "redis", "api", "worker", "flower"} <= set(services)
    assert services["flower"]["profiles"] == ["flower"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    assert "profiles" not in services["worker"] and "profiles" not in services["api"]
    for name in ("api", "worker", "worker-cpu"):
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == deps["redis"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["api"]["condition"] == "service_healthy"  # migrated first
    for name in ("postgres", "redis", "api"):
        assert services[name]["healthcheck"]["test"]


def test_worker_reserves_an_nvidia_gpu_and_the_cpu_fallback_does_not(compose: dict):
    [device] = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] == 1
    cpu = compose["services"]["worker-cpu"]
    assert "deploy" not in cpu
    assert cpu["build"]["args"]["TORCH_INDEX_URL"].endswith("/cpu")
    assert _env(cpu)["UNLEARND_DEVICE"] == "cpu"


def test_every_unlearnd_variable_is_a_setting_and_validates(compose: dict):
    fields = set(Settings.model_fields)
    for name, service in compose["services"].items():
        env = _env(service)
        unknown = {k for k in env if k.startswith("UNLEARND_") and k.removeprefix("UNLEARND_").lower() not in fields}
        assert not unknown, f"{name}: {unknown} are not settings"
    for name in ("api", "worker", "worker-cpu"):
        env = _env(compose["services"][name])
        values = {k.removeprefix("UNLEARND_").lower(): v for k, v in env.items() if v != ""}
        s = Settings(**values)
        assert s.environment == "production" and s.dispatcher == "celery"
        assert s.resolved_database_url.startswith("postgresql+psycopg://")
        assert s.broker_url == "redis://redis:6379/0" and s.celery_queue == "gpu"
        assert s.broker_visibility_timeout_seconds > 3600  # above the longest job
    flower = compose["services"]["flower"]["command"]
    assert f"--broker={_env(compose['services']['api'])['UNLEARND_BROKER_URL']}" in flower


def test_api_command_migrates_then_serves_the_real_app(compose: dict, dockerfile: str):
    command = compose["services"]["api"]["command"]
    script = command[-1]
    assert script.index("alembic upgrade head") < script.index("uvicorn unlearnd.api.app:app")
    assert (ROOT / "alembic.ini").is_file()
    assert hasattr(importlib.import_module("unlearnd.api.app"), "app")
    assert f"CMD {json.dumps(command)}" in dockerfile  # the image runs the same when started without compose


def test_worker_command_is_the_unlearnd_worker_entry_point(compose: dict, dockerfile: str):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["unlearnd"] == "unlearnd.cli.main:main"
    from unlearnd.cli.main import app

    help_text = CliRunner().invoke(app, ["worker", "--help"], terminal_width=200).output
    for name in ("worker", "worker-cpu"):
        command = compose["services"][name]["command"]
        assert command[:2] == ["unlearnd", "worker"]
        for option in (a for a in command[2:] if a.startswith("--")):
            assert option in help_text, f"{option} is not an option of `unlearnd worker`"
    assert 'CMD ["unlearnd", "worker"]' in dockerfile


def test_declared_volumes_secrets_and_build_targets_exist(compose: dict, dockerfile: str):
    targets = set(re.findall(r"^FROM \S+ AS (\w+)", dockerfile, flags=re.M))
    assert {"api", "worker"} <= targets
    for name, service in compose["services"].items():
        if "build" in service:
            assert service["build"]["target"] in targets, name
            for arg in service["build"].get("args") or {}:
                assert re.search(rf"^ARG {arg}\b", dockerfile, flags=re.M), f"{name}: build arg {arg}"
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: volume {source}"
        for secret in service.get("secrets") or []:
            assert secret in compose["secrets"], f"{name}: secret {secret}"
    env = _env(compose["services"]["worker"])
    assert env["UNLEARND_AUDIT_SIGNING_KEY_FILE"] == "/run/secrets/audit_signing_key"


def test_api_image_installs_no_ml_stack(dockerfile: str):
    """Run the api stage's own requirement filter on pyproject.toml."""
    script = re.search(r"RUN python - <<'EOF' > /tmp/api-requirements.txt\n(.*?)\nEOF\n", dockerfile, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    names = {re.split(r"[\[<>=!~ ;]", line, maxsplit=1)[0].lower() for line in out.split()}
    assert not names & {"torch", "transformers", "peft", "tokenizers", "safetensors"}
    assert {"fastapi", "celery", "redis", "sqlalchemy", "alembic", "uvicorn"} <= names
    assert any(line.startswith("psycopg[binary]") for line in out.split())
    api_stage = dockerfile.split("AS api", 1)[1].split("AS worker", 1)[0]
    assert "import unlearnd.api.app, sys; assert 'torch' not in sys.modules" in api_stage
