"""Every API operation once, free of I/O: a generator that yields the HTTP calls (and pauses) it needs and
returns the typed result. `Client` runs them with httpx's sync client and `AsyncClient` with its async one,
so the two cannot drift apart (the polling of `wait`, the error handling, the parsing are written once)."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import httpx

from unlearnd.types import FINAL_STATUSES, ForgetRequest, Page

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One HTTP request, relative to the client's base URL."""

    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Pause:
    seconds: float


Op = Generator[Call | Pause, httpx.Response | None, T]


def params(**values: Any) -> dict[str, Any]:
    """Query parameters without the unset ones; datetimes as ISO 8601."""
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in values.items() if v is not None}


def fetch(call: Call, model: type[T]) -> Op[T]:
    response = yield call
    assert response is not None
    return model.model_validate(response.json())  # type: ignore[attr-defined]


def fetch_json(call: Call) -> Op[Any]:
    response = yield call
    assert response is not None
    return response.json() if response.content else None


def fetch_bytes(call: Call) -> Op[bytes]:
    response = yield call
    assert response is not None
    return response.content


def page(path: str, query: dict[str, Any], item: type[T]) -> Op[Page[T]]:
    return (yield from fetch(Call("GET", path, query), Page[item]))  # type: ignore[valid-type]


def forget_body(
    model_id: str,
    records: Sequence[Mapping[str, Any]],
    *,
    subject: str,
    legal_basis: str,
    ticket: str | None,
    probes: Sequence[Mapping[str, str]] | None,
    method: str | None,
    init: str | None,
    config: Mapping[str, Any] | None,
    restore_from: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model_id": model_id,
        "subject": {"id": subject, "legal_basis": legal_basis, **({"ticket": ticket} if ticket else {})},
        "records": [dict(r) for r in records],
    }
    if probes:
        body["probes"] = [dict(p) for p in probes]
    for name, value in (
        ("method", method),
        ("init", init),
        ("config", dict(config) if config else None),
        ("restore_from", restore_from),
    ):
        if value is not None:
            body[name] = value
    return body


def wait(
    request_id: str,
    *,
    timeout: float | None,
    interval: float,
    on_update: Callable[[ForgetRequest], None] | None,
) -> Op[ForgetRequest]:
    """Poll `GET /v1/forget-requests/{id}` until the request ends; `on_update` sees every poll. TimeoutError
    after `timeout` seconds (None: no limit)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        req = yield from fetch(Call("GET", f"/v1/forget-requests/{request_id}"), ForgetRequest)
        if on_update is not None:
            on_update(req)
        if req.status in FINAL_STATUSES:
            return req
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"request {request_id} still {req.status} after {timeout} s")
        yield Pause(interval)
