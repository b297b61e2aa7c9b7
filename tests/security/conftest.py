"""Fixtures of the security tests: one live server per module (uvicorn thread + thread dispatcher, as in
tests/service), keys of any tenant and scope made directly in its database, and an error-shape helper."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from api.db import transaction
from api.security import ALL_SCOPES, create_api_key
from tests.service.support import Live, start_live, stop_live


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
