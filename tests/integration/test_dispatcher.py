"""The Celery dispatcher without a worker: its configuration, no torch in the API, and a broker that is down
(the request still commits; /readyz says why it is not ready)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.service.support import model_roots_for
from unlearnd.api.server import ServerThread
from unlearnd.api.settings import Settings
from unlearnd.worker.celery_app import TASK_NAME, make_celery
from unlearnd.worker.dispatch import CeleryDispatcher, build_dispatcher
from unlearnd.worker.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
DOWN = "redis://127.0.0.1:1/0"  # nothing listens on port 1
ADMIN_KEY = "uk_test0000_admin-secret-for-tests"


def test_celery_configuration_follows_the_job_protocol():
    s = Settings(dispatcher="celery", broker_visibility_timeout_seconds=7200, broker_key_prefix="p:")
    conf = make_celery(s).conf
    assert conf.task_acks_late is True and conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result is True and conf.task_reject_on_worker_lost is False
    assert conf.broker_transport_options == {"visibility_timeout": 7200, "global_keyprefix": "p:"}
    assert conf.task_default_queue == "gpu"


def test_the_api_side_of_celery_imports_no_torch_and_sends_by_name():
    code = (
        "import sys, unlearnd.api.app, unlearnd.worker.dispatch, unlearnd.worker.celery_app as c; "
        "from unlearnd.api.settings import Settings; c.make_celery(Settings()); "
        "assert 'torch' not in sys.modules and 'unlearnd.worker.runner' not in sys.modules, 'imported'; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert TASK_NAME == "unlearnd.run_job"


def test_worker_app_registers_the_task_and_touches_no_cuda():
    code = (
        "import sys, unlearnd.worker.celery_app as c; app = c.app; assert 'unlearnd.run_job' in app.tasks; "
        "import torch; assert not torch.cuda.is_initialized(); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_broker_down_the_request_still_commits_and_readyz_says_why(tmp_path: Path, tiny_world):
    settings = Settings(
        data_dir=tmp_path / "data",
        dispatcher="celery",
        broker_url=DOWN,
        bootstrap_key=ADMIN_KEY,
        model_roots=model_roots_for(tmp_path / "data"),
    )
    rt = Runtime.build(settings)
    dispatcher = build_dispatcher(rt)
    assert isinstance(dispatcher, CeleryDispatcher) and dispatcher.alive() is False
    rt.close()
    with ServerThread(settings) as server:
        client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "celery" in ready.text
        model = client.post("/v1/models", json={"name": "m", "source": str(tiny_world.model_dir)}).json()
        body = {
            "model_id": model["id"],
            "subject": {"id": "s", "legal_basis": "GDPR Art. 17"},
            "records": [{"text": "Someone was born in Nowhere."}],
        }
        r = client.post("/v1/forget-requests", json=body)
        assert r.status_code == 202, r.text  # committed: a worker's sweeper dispatches it once Redis is back
        assert client.get(f"/v1/jobs/{r.json()['job_id']}").json()["status"] == "queued"
        client.close()
