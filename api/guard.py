"""The request guard: a pure ASGI middleware in front of every route.

1. **Body size and time** before anything parses it: a `Content-Length` above `max_body_bytes` is refused at
   once (413), and a body without one (chunked) is counted while it streams and refused as soon as it passes
   the limit. A body not received in full within `body_read_timeout` seconds is refused (408) and the
   connection closed, so a client that announces a length and stalls cannot hold a connection (and a
   request's memory) indefinitely. FastAPI reads whole bodies into memory, and neither Starlette nor uvicorn
   bounds how long that takes.
2. **Idempotency capture**: for a POST with an `Idempotency-Key`, the buffered body is handed to the route's
   idempotency dependency (api/idempotency.py) and the response is held until it is stored, so a retry
   never sees "in flight" after the client already got its answer.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from unlearnd.api import idempotency
from unlearnd.api.errors import PayloadTooLarge, RequestTimeout, error_body

_BODYLESS = ("GET", "HEAD", "OPTIONS")


class RequestGuard:
    def __init__(self, app: ASGIApp, max_body_bytes: int, body_read_timeout: float = 30.0) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_read_timeout = body_read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                await _error(send, 400, "bad_request", "invalid Content-Length header")
                return
            if int(length) > self.max_body_bytes:
                await self._too_large(send)
                return
        if scope["method"] in _BODYLESS:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        with anyio.move_on_after(self.body_read_timeout) as deadline:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if len(body) > self.max_body_bytes:
                    await self._too_large(send)
                    return
                if not message.get("more_body", False):
                    break
        if deadline.cancelled_caught:
            limit = self.body_read_timeout
            message_text = f"the request body did not arrive within {limit:g} s"
            await _error(send, RequestTimeout.status_code, RequestTimeout.code, message_text, {"timeout_s": limit})
            return
        replay = _replaying(bytes(body), receive)
        if scope["method"] == "POST" and "idempotency-key" in headers:
            await self._idempotent(scope, replay, send, bytes(body))
        else:
            await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        limit = self.max_body_bytes
        message = f"request body larger than {limit} bytes"
        await _error(send, PayloadTooLarge.status_code, PayloadTooLarge.code, message, {"max_bytes": limit})

    async def _idempotent(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        from starlette.concurrency import run_in_threadpool

        pending = idempotency.Pending(body=body)
        scope[idempotency.SCOPE_KEY] = pending
        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        sessions = scope["app"].state.session_factory if "app" in scope else None
        try:
            await self.app(scope, receive, hold)
        except BaseException:
            if pending.row_id is not None and sessions is not None:
                await run_in_threadpool(idempotency.release, sessions, pending.row_id)
            raise
        start = next((m for m in held if m["type"] == "http.response.start"), None)
        if start is not None and pending.row_id is not None and sessions is not None:
            response_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start.get("headers", [])}
            response_body = b"".join(m.get("body", b"") for m in held if m["type"] == "http.response.body")
            await run_in_threadpool(
                idempotency.finish, sessions, pending, start["status"], response_headers, response_body
            )
        for message in held:
            await send(message)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that yields the buffered body once, then waits on the real one (for disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _error(send: Send, status: int, code: str, message: str, details: Any = None) -> None:
    payload = json.dumps(error_body(code, message, details)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
