"""Helpers of the integration tests: PostgreSQL databases, a private Redis namespace, `unlearnd worker`
subprocesses and the API (uvicorn in a thread) with the Celery dispatcher."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from tests.service.support import model_roots_for
from unlearnd.api.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("UNLEARND_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("UNLEARND_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
ADMIN_KEY = "uk_test0000_admin-secret-for-tests"
FINAL = ("succeeded", "failed", "cancelled")


def _admin_conn():
    import psycopg

    return psycopg.connect(PG_ADMIN_URL.replace("+psycopg", ""), autocommit=True, connect_timeout=5)


def create_database(name: str) -> str:
    with _admin_conn() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(name: str) -> None:
    with _admin_conn() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_client(url: str = REDIS_URL):
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)


@dataclass
class Broker:
    """A private namespace on the shared Redis (one key prefix, one queue)."""

    url: str
    prefix: str
    queue: str

    def keys(self) -> list[bytes]:
        return list(redis_client(self.url).scan_iter(match=f"{self.prefix}*", count=1000))

    def flush(self) -> int:
        """What a Redis restart without persistence does to us: every key of the namespace is gone (the
        queue, the unacked messages, kombu's bindings)."""
        keys = self.keys()
        if keys:
            redis_client(self.url).delete(*keys)
        return len(keys)

    def queued_ids(self) -> list[str]:
        import json

        raw = redis_client(self.url).lrange(f"{self.prefix}{self.queue}", 0, -1)
        return [json.loads(m)["headers"]["id"] for m in raw]


def make_settings(data_dir: Path, db_url: str, broker: Broker, **overrides: Any) -> Settings:
    """Short leases and sweeps so crash scenarios resolve in seconds."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": db_url,
        "dispatcher": "celery",
        "broker_url": broker.url,
        "broker_key_prefix": broker.prefix,
        "celery_queue": broker.queue,
        "bootstrap_key": ADMIN_KEY,
        "lease_seconds": 4.0,
        "sweep_interval_seconds": 0.5,
        "redispatch_after_seconds": 3.0,
        "progress_interval_seconds": 0.1,
        "max_attempts": 3,
        "device": "cpu",
        "model_roots": model_roots_for(data_dir),
        # one job per request unless a test is about coalescing (it passes its own bound)
        "max_requests_per_job": 1,
    }
    values.update(overrides)
    return Settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The `UNLEARND_*` environment that reproduces `settings` in another process."""
    env = {}
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, list):  # UNLEARND_MODEL_ROOTS: PATH-style
            value = os.pathsep.join(str(v) for v in value)
        env[f"UNLEARND_{name.upper()}"] = str(value)
    return env


@dataclass
class WorkerProcess:
    """`unlearnd worker` as a subprocess in its own process group (so SIGKILL takes all of it)."""

    settings: Settings
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("UNLEARND_")}
        env.update(settings_env(self.settings))
        env["PYTHONUNBUFFERED"] = "1"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unlearnd.cli.main", "worker", "-l", "INFO", *self.extra_args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while " ready." not in self.log():
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"worker not ready after {timeout} s:\n{self.log()[-4000:]}")
            time.sleep(0.2)
        return self

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL to the whole process group: no warm shutdown, no ack, no lease release."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60.0) -> None:
        """Warm shutdown (SIGTERM), SIGKILL if it does not end in time."""
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class Api:
    server: Any
    client: httpx.Client
    settings: Settings

    def wait(self, request_id: str, timeout: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            body = self.client.get(f"/v1/forget-requests/{request_id}").raise_for_status().json()
            if body["status"] in FINAL:
                return body
            if time.monotonic() > deadline:
                raise TimeoutError(f"request {request_id} still {body['status']} after {timeout} s")
            time.sleep(0.2)

    def job(self, job_id: str) -> dict:
        return self.client.get(f"/v1/jobs/{job_id}").raise_for_status().json()

    def events(self, job_id: str) -> list[dict]:
        return self.client.get(f"/v1/jobs/{job_id}/events", params={"limit": 500}).raise_for_status().json()["data"]

    def wait_step(self, job_id: str, step: int = 1, timeout: float = 180.0) -> dict:
        """Until the job is unlearning at `step` or later (it must be running by then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["progress"]["phase"] == "unlearning" and job["progress"]["step"] >= step:
                return job
            assert job["status"] in ("queued", "running"), job
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id} never reached unlearning step {step}")

    def stop(self) -> None:
        self.client.close()
        self.server.stop()


def start_api(settings: Settings) -> Api:
    from unlearnd.api.server import ServerThread

    server = ServerThread(settings).start()
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    return Api(server, client, settings)


def register_model(api: Api, world, name: str, *, retain: bool = True, holdout: bool = False, source=None) -> str:
    body = {
        "name": name,
        "source": str(source or world.model_dir),
        "retain": [r.to_dict() for r in world.retain] if retain else [],
        "holdout": [r.to_dict() for r in world.holdout] if holdout else [],
    }
    r = api.client.post("/v1/models", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def submit(api: Api, model_id: str, records: list[dict], config: dict, *, subject: str = "subject", key=None) -> dict:
    body = {
        "model_id": model_id,
        "subject": {"id": subject, "legal_basis": "GDPR Art. 17"},
        "records": records,
        "method": "ihl",
        "init": "fila",
        "config": config,
    }
    headers = {"Idempotency-Key": key} if key else {}
    deadline = time.monotonic() + 60
    while True:
        r = api.client.post("/v1/forget-requests", json=body, headers=headers)
        in_flight = r.status_code == 409 and r.json()["error"]["code"] == "idempotency_key_in_flight"
        if not in_flight or time.monotonic() > deadline:  # the first of a key is still being created: retry
            break
        time.sleep(0.1)
    assert r.status_code == 202, r.text
    return r.json()


# Job sizes on the tiny world (no holdout → no stopping rule → exactly max_steps steps).
TINY = {"max_steps": 2, "eval_every": 2, "rank": 2, "fisher_max_examples": 4, "eval_max_records": 4, "seed": 0}
LONG = {"max_steps": 150, "eval_every": 150, "rank": 4, "fisher_max_examples": 4, "eval_max_records": 4, "seed": 0}
