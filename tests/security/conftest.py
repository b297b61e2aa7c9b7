"""Fixtures of the security tests: one live server per module (uvicorn thread + thread dispatcher, as in
tests/service), keys of any tenant and scope made directly in its database, and an error-shape helper."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select, text

from tests.service.support import Live, start_live, stop_live
from unlearnd.api import forget, schemas
from unlearnd.api.db import transaction
from unlearnd.api.models import ApiKey, utcnow
from unlearnd.api.security import ALL_SCOPES, create_api_key
from unlearnd.api.settings import Settings
from unlearnd.worker import protocol
from unlearnd.worker.publish import Built, active_version, publish

RECORDS = [{"text": "Quentin Marsh was born in Oakridge."}, {"prompt": "His phone is", "completion": " 555 0101."}]
REPORT = {
    "before": {"forget": {"ma": 0.9, "el10": 0.8}, "holdout": {"ma": 0.3}, "mia": {"loss_auc": 0.97}},
    "after": {"forget": {"ma": 0.1 + 0.2, "el10": 1e-05}, "holdout": {"ma": 0.31}, "mia": {"loss_auc": float("nan")}},
    "thresholds": {"ma": 0.3, "el": 0.05},
    "steps": 12,
    "reached": True,
    "adapter": {"rank": 8, "alpha": 16.0, "target_modules": ["q_proj", "v_proj"]},
}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    lv = start_live(tmp_path_factory.mktemp("security") / "data")
    yield lv
    stop_live(lv)


def sessions(live: Live):
    return live.server.app.state.session_factory


def make_key(live: Live, tenant: str = "default", scopes: tuple[str, ...] | list[str] = ALL_SCOPES) -> str:
    with transaction(sessions(live)) as session:
        _, key = create_api_key(session, live.settings, tenant=tenant, name="test", scopes=tuple(scopes))
    return key


def client(live: Live, key: str) -> httpx.Client:
    return httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def expect_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    assert err["message"]
    return err


def publish_request(
    session_factory,
    settings: Settings,
    model_id: str,
    subject: str,
    records: list[dict] = RECORDS,
    built: Built | None = None,
) -> str:
    """Create a request and publish its job exactly as a worker would (adapter version + audit + purge),
    with a made-up report instead of a trained model. Returns the request id."""
    owner = "test-worker"
    body = schemas.ForgetRequestIn(
        model_id=model_id, subject={"id": subject, "legal_basis": "GDPR Art. 17"}, records=records
    )
    with session_factory() as session:
        caller = session.scalar(select(ApiKey).where(ApiKey.name == "bootstrap"))
        req, _ = forget.create(session, settings, caller, body, None)
        job_id = session.execute(text("SELECT job_id FROM job_requests WHERE request_id = :r"), {"r": req.id}).scalar()
    with transaction(session_factory) as session:
        assert protocol.claim(session, job_id, owner, utcnow(), 60, 3)
        parent = active_version(session, model_id)
        built = built or Built("a" * 64, 123, "local:adapters/none.tar.gz", REPORT, "forgotten", "f" * 64)
        publish(session, job_id, owner, parent.id if parent else None, built)
    return req.id
