"""Idempotency-Key (IETF draft semantics) and the limits: 413 before parsing, records / characters /
probes per request, the per-key rate limit (429 + Retry-After); every 4xx carries a machine-readable code."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from sqlalchemy import func, select, update

from tests.service.support import Live, make_model_dir, start_live, stop_live
from unlearnd.api.db import transaction
from unlearnd.api.idempotency import fingerprint, reserve
from unlearnd.api.models import ForgetRequest, IdempotencyKey, utcnow
from unlearnd.api.security import ensure_tenant

from .conftest import client, expect_error, make_key, sessions

SUBJECT = {"id": "idem-subject", "legal_basis": "GDPR Art. 17"}


@pytest.fixture(scope="module")
def model_id(live: Live) -> str:
    source = make_model_dir(live.settings, "no-weights")
    r = live.client.post("/v1/models", json={"name": "limits", "source": source})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _body(model_id: str, text: str = "Idempotent record.") -> dict:
    return {"model_id": model_id, "subject": SUBJECT, "records": [{"text": text}]}


def _requests_with_key(live: Live, key: str) -> int:
    with transaction(sessions(live)) as session:
        return session.scalar(select(func.count()).where(ForgetRequest.idempotency_key == key))


# --- Idempotency-Key ---------------------------------------------------------------------------------------


def test_same_key_and_body_replays_the_stored_response(live: Live, model_id: str):
    headers = {"Idempotency-Key": "same-1"}
    first = live.client.post("/v1/forget-requests", json=_body(model_id), headers=headers)
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    # the request moves on (its job fails: no weights) but the replay is the first response, byte for byte
    time.sleep(0.3)
    again = live.client.post("/v1/forget-requests", content=first.request.content, headers=first.request.headers)
    assert again.status_code == 202
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    # key order and whitespace do not make another request
    reordered = live.client.post(
        "/v1/forget-requests",
        content=b'{"records":[{"text":"Idempotent record."}], "subject": {"legal_basis":"GDPR Art. 17",'
        b'"id":"idem-subject"},"model_id":"' + model_id.encode() + b'"}',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert reordered.content == first.content
    assert _requests_with_key(live, "same-1") == 1


def test_same_key_with_a_different_body_is_422(live: Live, model_id: str):
    headers = {"Idempotency-Key": "same-2"}
    assert live.client.post("/v1/forget-requests", json=_body(model_id), headers=headers).status_code == 202
    other = live.client.post("/v1/forget-requests", json=_body(model_id, "Another record."), headers=headers)
    err = expect_error(other, 422, "idempotency_key_reused")
    assert "Another record" not in other.text
    assert err["details"] == {"idempotency_key": "same-2"}
    # another endpoint with the same key is a different request too
    expect_error(
        live.client.post("/v1/models", json={"name": "x", "source": "/"}, headers=headers),
        422,
        "idempotency_key_reused",
    )
    assert _requests_with_key(live, "same-2") == 1


def test_same_key_while_the_first_is_in_flight_is_409(live: Live, model_id: str):
    """A real race: the first request is held inside its handler (dispatch blocks) while a retry arrives."""
    dispatcher = live.server.app.state.dispatcher
    entered, release = threading.Event(), threading.Event()
    original = dispatcher.dispatch

    def slow_dispatch(job_id: str, **kw) -> None:
        entered.set()
        release.wait(30)
        original(job_id, **kw)

    headers = {"Idempotency-Key": "same-3"}
    results: dict[str, httpx.Response] = {}
    dispatcher.dispatch = slow_dispatch
    try:
        first = threading.Thread(
            target=lambda: results.setdefault(
                "first", live.client.post("/v1/forget-requests", json=_body(model_id), headers=headers)
            )
        )
        first.start()
        assert entered.wait(30)
        expect_error(
            live.client.post("/v1/forget-requests", json=_body(model_id), headers=headers),
            409,
            "idempotency_key_in_flight",
        )
    finally:
        release.set()
        first.join(30)
        dispatcher.dispatch = original
    assert results["first"].status_code == 202
    replay = live.client.post("/v1/forget-requests", json=_body(model_id), headers=headers)
    assert replay.status_code == 202 and replay.json()["id"] == results["first"].json()["id"]
    assert _requests_with_key(live, "same-3") == 1


def test_keys_are_per_tenant_and_expire_after_the_ttl(live: Live, model_id: str, tmp_path: Path):
    headers = {"Idempotency-Key": "shared-name"}
    with client(live, make_key(live, "other-tenant")) as other:
        source = make_model_dir(live.settings, "per-tenant")
        mine = other.post("/v1/models", json={"name": "m", "source": source}, headers=headers)
        assert mine.status_code == 201  # the same key in the default tenant below is unrelated
    first = live.client.post("/v1/forget-requests", json=_body(model_id), headers=headers)
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    with transaction(sessions(live)) as session:
        row = session.scalar(select(IdempotencyKey).where(IdempotencyKey.key == "shared-name").limit(1))
        ttl = row.expires_at - row.created_at
        assert abs(ttl - timedelta(hours=24)) < timedelta(seconds=1)
        session.query(IdempotencyKey).filter(IdempotencyKey.key == "shared-name").update(
            {"expires_at": utcnow() - timedelta(seconds=1)}
        )
    after = live.client.post("/v1/forget-requests", json=_body(model_id), headers=headers)
    assert after.status_code == 202 and "idempotent-replayed" not in after.headers
    assert after.json()["id"] != first.json()["id"]  # an expired key starts afresh


def test_a_failed_first_request_is_not_stored_and_may_be_retried(live: Live, model_id: str):
    headers = {"Idempotency-Key": "fix-and-retry"}
    expect_error(
        live.client.post("/v1/forget-requests", json={**_body(model_id), "model_id": "mdl_nope"}, headers=headers),
        404,
        "not_found",
    )
    fixed = live.client.post("/v1/forget-requests", json=_body(model_id), headers=headers)
    assert fixed.status_code == 202


def test_a_reservation_abandoned_by_a_dead_process_is_taken_over(live: Live, model_id: str):
    path, raw = "/v1/forget-requests", json.dumps(_body(model_id)).encode()
    with sessions(live)() as session:
        tenant_id = ensure_tenant(session).id
        reserve(session, live.settings, tenant_id, "orphan", fingerprint(live.settings, "POST", path, raw))
    headers = {"Idempotency-Key": "orphan", "Content-Type": "application/json"}
    expect_error(live.client.post(path, content=raw, headers=headers), 409, "idempotency_key_in_flight")
    with transaction(sessions(live)) as session:  # its process died: the lock runs out
        session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key == "orphan")
            .values(locked_until=utcnow() - timedelta(seconds=1))
        )
    assert live.client.post(path, content=raw, headers=headers).status_code == 202


def test_idempotency_key_header_is_validated(live: Live, model_id: str):
    expect_error(
        live.client.post("/v1/forget-requests", json=_body(model_id), headers={"Idempotency-Key": "x" * 300}),
        422,
        "validation_error",
    )


# --- limits ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory):
    """A server with tiny limits (and a low rate limit), to test them cheaply."""
    lv = start_live(
        tmp_path_factory.mktemp("small") / "data",
        max_body_bytes=4096,
        max_records_per_request=3,
        max_record_chars=50,
        max_probes_per_request=2,
        rate_limit_per_minute=60,
        rate_limit_burst=5,
        body_read_timeout_seconds=1.0,
    )
    yield lv
    stop_live(lv)


@pytest.fixture(scope="module")
def small_model(small: Live) -> str:
    with client(small, make_key(small, "limits")) as c:
        r = c.post("/v1/models", json={"name": "s", "source": make_model_dir(small.settings, "small-model")})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _raw_post(live: Live, head: str, body: bytes = b"") -> str:
    """Send a request by hand (headers, then maybe part of a body) and read the answer."""
    url = urlparse(live.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(head.encode() + body)
        return s.recv(4096).decode()


def test_an_oversized_content_length_is_413_before_the_body_is_sent(small: Live):
    limit = small.settings.max_body_bytes
    r = small.client.post("/v1/models", content=b"x" * (limit + 1), headers={"Content-Type": "application/json"})
    assert expect_error(r, 413, "payload_too_large")["details"] == {"max_bytes": limit}
    # not one body byte sent: the announced length alone is refused
    answer = _raw_post(small, f"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: {limit * 1000}\r\n\r\n")
    assert answer.startswith("HTTP/1.1 413") and "payload_too_large" in answer


def test_a_stalled_body_is_408_and_the_connection_is_closed(small: Live):
    """A client that announces a length and sends only part of it is answered 408 once the body read timeout
    passes, and the server closes the connection (it does not wait for the rest indefinitely)."""
    url = urlparse(small.url)
    head = "POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        started = time.monotonic()
        s.sendall(head.encode() + b'{"name": "stal')
        answer = b""
        while chunk := s.recv(4096):  # until the server closes the connection (a timeout here fails the test)
            answer += chunk
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer, answer
    assert b"stal" not in answer  # nothing of the partial body is echoed
    assert 0.9 <= waited < 8, waited
    # a body that arrives in time, in pieces, is unaffected
    body = json.dumps({"name": "in-time", "source": "nowhere"}).encode()
    head = f"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(head.encode() + b"\r\n" + body[:5])
        time.sleep(0.3)
        s.sendall(body[5:])
        assert s.recv(4096).startswith(b"HTTP/1.1 401")  # read in full, then refused for the missing key


def test_a_chunked_body_is_counted_while_it_streams(small: Live):
    """No Content-Length: the guard counts the chunks and answers 413 once the limit is passed, while the
    client has not even finished its body (so nothing could have parsed it)."""
    limit = small.settings.max_body_bytes
    chunk = b"y" * 1024
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(limit // len(chunk) + 1))
    head = "POST /v1/models HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
    answer = _raw_post(small, head, body)  # the terminating 0-chunk is never sent
    assert answer.startswith("HTTP/1.1 413") and "payload_too_large" in answer


@pytest.mark.parametrize(
    "patch, code",
    [
        ({"records": [{"text": f"r{i}"} for i in range(4)]}, "too_many_records"),
        ({"records": [{"text": "z" * 51}]}, "record_too_long"),
        ({"records": [{"prompt": "p" * 30, "completion": "c" * 30}]}, "record_too_long"),
        ({"probes": [{"question": "q", "answer": "a"}] * 3}, "too_many_probes"),
        ({"probes": [{"question": "q" * 40, "answer": "a" * 20}]}, "record_too_long"),
    ],
)
def test_request_limits_are_422_with_their_code(small: Live, small_model: str, patch: dict, code: str):
    with client(small, make_key(small, "limits", ["requests:write"])) as c:
        r = c.post("/v1/forget-requests", json={**_body(small_model), **patch})
    err = expect_error(r, 422, code)
    assert "zzzz" not in r.text and "cccc" not in r.text  # the text is never echoed
    assert err["details"]


def test_reference_records_obey_the_character_limit(small: Live):
    body = {"name": "long", "source": make_model_dir(small.settings, "long"), "holdout": [{"text": "h" * 51}]}
    with client(small, make_key(small, "limits")) as c:
        err = expect_error(c.post("/v1/models", json=body), 422, "record_too_long")
    assert err["details"]["field"] == "holdout"


def test_rate_limit_is_per_key_with_retry_after(small: Live):
    key, other = make_key(small, "rl"), make_key(small, "rl")
    with client(small, key) as c:
        codes = [c.get("/v1/audits").status_code for _ in range(5)]
        assert codes == [200] * 5
        r = c.get("/v1/audits")
        err = expect_error(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1
        assert err["details"] == {"per_minute": 60.0, "burst": 5}
    with client(small, other) as c:
        assert c.get("/v1/audits").status_code == 200  # another key has its own bucket


def test_every_4xx_has_a_code(small: Live):
    anon = httpx.Client(base_url=small.url, timeout=30)
    keyed = client(small, make_key(small, "codes"))
    answers = [
        anon.get("/v1/models"),
        anon.get("/nowhere"),
        anon.put("/v1/models"),
        anon.post("/v1/models", content=b"x" * 5000),
        keyed.post("/v1/models", content=b"{broken", headers={"Content-Type": "application/json"}),
        keyed.get("/v1/audits", params={"cursor": "??"}),
        keyed.get("/v1/models/mdl_nope"),
        keyed.post("/v1/forget-requests", json={}, headers={"Idempotency-Key": "bad key with spaces"}),
    ]
    anon.close()
    keyed.close()
    for r in answers:
        assert 400 <= r.status_code < 500, r
        body = r.json()
        assert isinstance(body["error"]["code"], str) and body["error"]["code"], body
