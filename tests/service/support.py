"""Helpers of the service tests (imported relatively, so they work whatever pytest's import mode)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from unlearnd.api.db import transaction
from unlearnd.api.models import BaseModel
from unlearnd.api.settings import Settings
from unlearnd.worker.runtime import Runtime

ADMIN_KEY = "uk_test0000_admin-secret-for-tests"
FINAL = ("succeeded", "failed", "cancelled")


def wait_for_request(http: httpx.Client, request_id: str, timeout: float = 300.0, interval: float = 0.2) -> dict:
    """Poll `GET /v1/forget-requests/{id}` on an authenticated client until the request ends (its body), or
    raise TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        body = http.get(f"/v1/forget-requests/{request_id}").raise_for_status().json()
        if body["status"] in FINAL:
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"request {request_id} still {body['status']} after {timeout} s")
        time.sleep(interval)


REPO_CACHE = Path(__file__).resolve().parents[2] / ".cache"


def model_roots_for(data_dir: Path) -> list[Path]:
    """The model roots of a test service: a directory of its own (see `make_model_dir`) and the caches the
    tiny world is built in (tests/conftest.py's CACHE, the service tests' fallback under .cache/)."""
    from tests.conftest import CACHE

    return [data_dir.parent / "models", CACHE, REPO_CACHE]


def make_model_dir(settings: Settings, name: str) -> str:
    """A directory that passes registration (a config.json, no weights: its jobs fail with "no weight files")
    in the service's first model root; returns its absolute path, a source the API accepts and stores as
    `name` (relative to the root)."""
    path = settings.resolved_model_roots[0] / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    return str(path)


def make_settings(data_dir: Path, **overrides) -> Settings:
    """Short leases and sweeps so restart and crash scenarios resolve in seconds."""
    values = {
        "data_dir": data_dir,
        "model_roots": model_roots_for(data_dir),
        "bootstrap_key": ADMIN_KEY,
        "lease_seconds": 4.0,
        "sweep_interval_seconds": 0.5,
        "progress_interval_seconds": 0.1,
        "max_attempts": 3,
        "device": "cpu",
        # one job per request unless a test is about coalescing (it passes its own bound)
        "max_requests_per_job": 1,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Live:
    url: str
    settings: Settings
    client: httpx.Client
    server: object

    def wait(self, request_id: str, timeout: float = 300.0) -> dict:
        return wait_for_request(self.client, request_id, timeout)


def start_live(data_dir: Path, *, run_jobs: bool = True, **overrides) -> Live:
    """A live server; `run_jobs=False` stops its dispatcher (and sweeper) at once, for tests that publish
    requests themselves (tests/security/conftest.publish_request): a running sweeper could claim such a
    request's job between its creation and the test's own claim."""
    from unlearnd.api.server import ServerThread

    s = make_settings(data_dir, **overrides)
    server = ServerThread(s).start()
    if not run_jobs:
        server.app.state.dispatcher.stop()
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    return Live(server.url, s, client, server)


def stop_live(live: Live) -> None:
    live.client.close()
    live.server.stop()


def add_model_row(runtime: Runtime, source: str, tenant_id: str, **fields) -> str:
    with transaction(runtime.sessions) as session:
        model = BaseModel(tenant_id=tenant_id, name=fields.pop("name", source), source=source, **fields)
        session.add(model)
        session.flush()
        return model.id
