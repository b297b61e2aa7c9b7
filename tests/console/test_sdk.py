"""The Python SDK: the README's example runs a real request (tests/console/conftest.py), the sync and async
clients read the same, every page is iterated, errors carry the API's code, downloads are verified, and
importing it needs neither torch nor the server."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest

from tests.service.support import ADMIN_KEY, make_model_dir
from unlearnd import ApiError, AsyncClient, Client, types
from unlearnd.api import schemas

from .conftest import SUBJECT, Finished


def test_the_readme_sdk_example_runs_a_request_to_its_evidence(finished: Finished):
    req = finished.request
    assert req["status"] in ("succeeded", "failed") and req["audit_id"]
    assert f"{req['id']} {req['status']} {req['verdict']}" in finished.output
    assert f"{finished.audit['seq']} {req['audit_id']} {req['verdict']}" in finished.output  # client.audits(...)
    report = finished.workdir / f"evidence-{req['audit_id']}.html"
    assert report.read_text().startswith("<!doctype html>")
    assert (finished.workdir / "adapter" / "adapter_config.json").is_file() == (req["adapter_version"] is not None)


@pytest.mark.parametrize(
    "sdk, api",
    [
        (types.ForgetRequest, schemas.ForgetRequestOut),
        (types.Job, schemas.JobOut),
        (types.Event, schemas.EventOut),
        (types.Model, schemas.ModelOut),
        (types.Adapter, schemas.AdapterOut),
        (types.Audit, schemas.AuditOut),
        (types.ChainCheck, schemas.ChainOut),
        (types.Progress, schemas.ProgressOut),
    ],
    ids=lambda m: m.__name__,
)
def test_sdk_types_have_the_fields_of_the_api_schemas(sdk, api):
    assert set(sdk.model_fields) == set(api.model_fields)


def test_importing_the_sdk_needs_neither_torch_nor_the_server_stack():
    code = (
        "import sys, unlearnd; from unlearnd import Client, AsyncClient; "
        "server = ('api', 'core', 'worker', 'cli', 'migrations'); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'fastapi', 'sqlalchemy', 'transformers') "
        "or m.split('.')[0] in server or (m.startswith('unlearnd.') and m.split('.')[1] in server)]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_page_is_iterated_newest_first(finished: Finished):
    """Three more requests (on a model without weights: their jobs fail at once) make four of everything."""
    live = finished.live
    with Client(live.url, ADMIN_KEY) as client:
        model = client.register_model("no-weights", make_model_dir(live.settings, "no-weights"))
        made = [client.forget(model.id, [{"text": f"Record {k}."}], subject="pager", method="ihl").id for k in range(3)]
        for request_id in made:
            assert client.wait(request_id, timeout=120, interval=0.1).status == "failed"
        listed = [r.id for r in client.requests(model_id=model.id, page_size=2)]
        assert listed == made[::-1]
        assert [a.request_id for a in client.audits(subject="pager", page_size=1)] == made[::-1]
        assert [r.id for r in client.requests(status="failed", page_size=1)][:3] == made[::-1]
        assert client.request(made[0]).progress.phase == "done"  # a finished request is past its phases


def test_the_async_client_reads_what_the_sync_one_reads(finished: Finished):
    live = finished.live

    async def read() -> tuple:
        async with AsyncClient(live.url, ADMIN_KEY) as client:
            done = await client.wait(finished.request["id"], timeout=10)
            audits = [a.id async for a in client.audits(subject=SUBJECT)]
            report = await client.report(done.audit_id)
            job = await client.job(done.job_id)
            return done, audits, report, job

    done, audits, report, job = asyncio.run(read())
    with Client(live.url, ADMIN_KEY) as client:
        assert client.request(done.id) == done
        assert [a.id for a in client.audits(subject=SUBJECT)] == audits == [finished.audit["id"]]
        assert client.job(done.job_id).id == job.id
    assert done.audit_id in report


def test_errors_carry_the_api_code(finished: Finished):
    with Client(finished.live.url, ADMIN_KEY) as client, pytest.raises(ApiError) as e:
        client.request("req_" + "0" * 32)
    assert (e.value.status, e.value.code) == (404, "not_found")
    with Client(finished.live.url, "uk_wrong") as client, pytest.raises(ApiError) as e:
        list(client.audits())
    assert (e.value.status, e.value.code) == (401, "unauthorized")
    with Client("http://127.0.0.1:9", "k") as client, pytest.raises(ApiError) as e:
        client.models().__next__()
    assert (e.value.status, e.value.code) == (0, "unreachable")


def test_a_download_that_does_not_hash_to_the_recorded_sha256_is_refused(tmp_path):
    meta = {
        "id": "adp_1",
        "model_id": "mdl_1",
        "version": 1,
        "parent_id": None,
        "job_id": "job_1",
        "rank": 8,
        "alpha": 16.0,
        "target_modules": ["q_proj"],
        "sha256": "0" * 64,
        "size_bytes": 3,
        "status": "active",
        "created_at": "2026-01-01T00:00:00Z",
        "download_url": "/v1/adapters/adp_1/download",
    }

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/download"):
            return httpx.Response(200, content=b"not the adapter", headers={"X-Adapter-SHA256": "0" * 64})
        return httpx.Response(200, json=meta)

    client = Client("http://unlearnd.test", "k")
    client.http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(answer))
    with pytest.raises(ApiError) as e:
        client.download_adapter("adp_1", tmp_path / "adapter")
    assert e.value.code == "checksum_mismatch" and not (tmp_path / "adapter").exists()
