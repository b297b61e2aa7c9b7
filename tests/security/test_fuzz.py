"""Schemathesis over the whole OpenAPI schema, in process (ASGI), authenticated as an admin key: no 5xx,
every status code, content type, header and body conforms to the schema, every error has the envelope
with a `code`, and an operation that declares security refuses a request without a key.

Bounded for CI: a few examples per operation, no deadline. The download endpoint's 200 body is a gzip
stream with no JSON schema (documented as `application/gzip`); fuzzed ids never reach it, and the
conformance checks only compare its declared content type.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select

from tests.service.support import ADMIN_KEY, make_settings
from unlearnd.api import certificates
from unlearnd.api.app import create_app
from unlearnd.api.archive import pack_dir
from unlearnd.api.blobs import BlobStore
from unlearnd.api.db import make_engine, make_session_factory, transaction, upgrade_to_head
from unlearnd.api.models import AuditRecord, BaseModel
from unlearnd.api.security import ensure_bootstrap_key, ensure_tenant
from unlearnd.worker.publish import Built

from .conftest import REPORT, publish_request

MAX_EXAMPLES = 8  # per operation and generation mode


def _operations() -> list[tuple[str, str]]:
    """(method, path) of every operation, from the app's schema (no lifespan runs for this)."""
    paths = create_app(make_settings(Path("unused"))).openapi()["paths"]
    return [(method.upper(), path) for path, item in paths.items() for method in item]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A migrated data dir holding one resource of every type (a published request with a real tarball in
    the blob store), so successful responses of every id route are checked against the schema too."""
    tmp = tmp_path_factory.mktemp("fuzz")
    settings = make_settings(tmp / "data", rate_limit_per_minute=0)  # 429s have their own tests
    upgrade_to_head(settings)
    engine = make_engine(settings.resolved_database_url)
    sessions = make_session_factory(engine, certificates.load_signing_key(settings))  # the app's key, once made
    with transaction(sessions) as session:
        tenant_id = ensure_tenant(session).id
        ensure_bootstrap_key(session, settings)
        model = BaseModel(tenant_id=tenant_id, name="fuzz", source=str(tmp), holdout=[{"text": "h"}])
        session.add(model)
        session.flush()
        model_id = model.id
    adapter_dir = tmp / "adapter"
    adapter_dir.mkdir()
    (adapter_dir / "adapter_config.json").write_text("{}")
    sha, size = pack_dir(adapter_dir, tmp / "adapter.tar.gz")
    uri = BlobStore(settings.resolved_blob_dir).put(tmp / "adapter.tar.gz", f"adapters/{sha}.tar.gz")
    built = Built(sha, size, uri, REPORT, "forgotten", "f" * 64)
    request_id = publish_request(sessions, settings, model_id, "fuzz-subject", built=built)
    with sessions() as session:
        row = session.execute(
            select(AuditRecord.id, AuditRecord.job_id, AuditRecord.adapter_version_id).where(
                AuditRecord.request_id == request_id
            )
        ).one()
    engine.dispose()
    ids = {"model": model_id, "request": request_id, "job": row.job_id, "adapter": row.adapter_version_id}
    ids["audit"] = row.id
    return {"settings": settings, "ids": ids}


@pytest.fixture(scope="module")
def api_schema(seeded: dict):
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(seeded["settings"]))


def _real_id(path: str, ids: dict) -> str | None:
    for prefix, kind in (
        ("/v1/models/", "model"),
        ("/v1/forget-requests/", "request"),
        ("/v1/jobs/", "job"),
        ("/v1/adapters/", "adapter"),
        ("/v1/audits/", "audit"),
    ):
        if path.startswith(prefix + "{id}"):
            return ids[kind]
    return None


def error_envelope(ctx, response, case) -> bool | None:
    """Every 4xx/5xx is `{"error": {"code": <non-empty str>, "message", "details"}}`."""
    if response.status_code < 400:
        return None
    error = response.json()["error"]
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str), error
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,
    error_envelope,
]


@pytest.mark.parametrize("method, path", _operations())
def test_operation_conforms_to_its_schema(api_schema, seeded: dict, method: str, path: str):
    """Valid and invalid data (random ids), then valid data on the seeded resource's real id.
    (schemathesis' lazy `from_fixture` loader does not run on pytest 9, so operations are driven here.)"""
    operation = api_schema[path][method]
    strategies = [(operation.as_strategy(GenerationMode.POSITIVE), False)]
    strategies.append((operation.as_strategy(GenerationMode.NEGATIVE), True))  # impossible without inputs
    if (real := _real_id(path, seeded["ids"])) is not None:
        strategies.append((operation.as_strategy(GenerationMode.POSITIVE, path_parameters={"id": real}), False))
    for strategy, may_be_empty in strategies:

        @given(case=strategy)
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        def fuzz(case) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN_KEY}"}, checks=CHECKS)

        try:
            fuzz()
        except Unsatisfiable:
            if not may_be_empty:
                raise
