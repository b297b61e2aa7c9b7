"""`Client` (sync) and `AsyncClient`: the unlearnd API over httpx, typed, for scripts, the CLI and the demo.

```python
from unlearnd import Client

with Client("http://127.0.0.1:8000", key="uk_…") as client:
    req = client.forget("mdl_…", [{"text": "Jane Roe was born on 3 May 1980."}], subject="customer-8812")
    done = client.wait(req)
    if done.adapter_version:
        client.download_adapter(done.adapter_version.id, "./adapter")   # sha256-verified, unpacked
    for audit in client.audits(subject="customer-8812"):
        print(audit.seq, audit.verdict)
```

Both take the URL and key from `UNLEARND_URL` / `UNLEARND_API_KEY` when not given. Every method raises
`ApiError` (with the API's error code) for an error answer or an unreachable server. The operations
themselves live in `unlearnd/_ops.py`, written once for both clients.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from unlearnd import _ops
from unlearnd._ops import Call, Op, Pause
from unlearnd.archive import unpack
from unlearnd.errors import ApiError
from unlearnd.types import Adapter, Audit, ChainCheck, Event, ForgetRequest, Job, Model

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"
RequestRef = str | ForgetRequest


def _request_id(request: RequestRef) -> str:
    return request.id if isinstance(request, ForgetRequest) else request


class _Base:
    def __init__(self, url: str | None, key: str | None) -> None:
        self.url = (url or os.environ.get("UNLEARND_URL") or DEFAULT_URL).rstrip("/")
        key = key or os.environ.get("UNLEARND_API_KEY")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}

    def _checked(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response


def _verify_download(actual: str, adapter: Adapter, header: str | None) -> None:
    """The tarball must hash to the version's recorded sha256 and to the one the download announced."""
    if actual != adapter.sha256 or actual != header:
        raise ApiError(0, "checksum_mismatch", f"sha256 {actual} ≠ expected {adapter.sha256}")


class Client(_Base):
    """The synchronous client (a context manager; `close()` otherwise)."""

    def __init__(self, url: str | None = None, key: str | None = None, *, timeout: float = 60.0) -> None:
        super().__init__(url, key)
        self.http = httpx.Client(base_url=self.url, headers=self._headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, call: Call) -> httpx.Response:
        try:
            response = self.http.request(
                call.method, call.path, params=call.params, json=call.json, headers=call.headers
            )
        except httpx.TransportError as e:
            raise ApiError.unreachable(self.url, e) from None
        return self._checked(response)

    def _run(self, op: Op[T]) -> T:
        try:
            step = next(op)
            while True:
                if isinstance(step, Pause):
                    time.sleep(step.seconds)
                    step = op.send(None)
                else:
                    step = op.send(self._send(step))
        except StopIteration as stop:
            return stop.value

    def _iterate(self, path: str, query: dict[str, Any], item: type[T]) -> Iterator[T]:
        cursor = None
        while True:
            page = self._run(_ops.page(path, {**query, **_ops.params(cursor=cursor)}, item))
            yield from page.data
            if not page.has_more:
                return
            cursor = page.next

    # --- forget requests --------------------------------------------------------------------------------

    def forget(
        self,
        model_id: str,
        records: Sequence[Mapping[str, Any]],
        *,
        subject: str,
        legal_basis: str = "GDPR Art. 17",
        ticket: str | None = None,
        probes: Sequence[Mapping[str, str]] | None = None,
        method: str | None = None,
        init: str | None = None,
        config: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        restore_from: str | None = None,
    ) -> ForgetRequest:
        """Submit a forget request (`{"text"}`, `{"prompt", "completion"}` or `{"messages"}` records). With
        an `idempotency_key`, a retry returns the first request instead of creating a second one. `restore_from`:
        the model id of the checkpoint from before corrupting documents, to restore instead of only forget."""
        body = _ops.forget_body(
            model_id,
            records,
            subject=subject,
            legal_basis=legal_basis,
            ticket=ticket,
            probes=probes,
            method=method,
            init=init,
            config=config,
            restore_from=restore_from,
        )
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._run(_ops.fetch(Call("POST", "/v1/forget-requests", json=body, headers=headers), ForgetRequest))

    def request(self, request: RequestRef) -> ForgetRequest:
        return self._run(_ops.fetch(Call("GET", f"/v1/forget-requests/{_request_id(request)}"), ForgetRequest))

    def requests(
        self, *, status: str | None = None, model_id: str | None = None, page_size: int = 50
    ) -> Iterator[ForgetRequest]:
        """The tenant's forget requests, newest first, every page."""
        query = _ops.params(status=status, model_id=model_id, limit=page_size)
        return self._iterate("/v1/forget-requests", query, ForgetRequest)

    def cancel(self, request: RequestRef) -> ForgetRequest:
        path = f"/v1/forget-requests/{_request_id(request)}/cancel"
        return self._run(_ops.fetch(Call("POST", path), ForgetRequest))

    def wait(
        self,
        request: RequestRef,
        *,
        timeout: float | None = None,
        interval: float = 0.5,
        on_update: Callable[[ForgetRequest], None] | None = None,
    ) -> ForgetRequest:
        """Poll until the request succeeded, failed or was cancelled; `on_update` sees every poll."""
        op = _ops.wait(_request_id(request), timeout=timeout, interval=interval, on_update=on_update)
        return self._run(op)

    def job(self, job_id: str) -> Job:
        return self._run(_ops.fetch(Call("GET", f"/v1/jobs/{job_id}"), Job))

    def events(self, job_id: str, *, page_size: int = 100) -> Iterator[Event]:
        """A job's events so far, oldest first."""
        return self._iterate(f"/v1/jobs/{job_id}/events", {"limit": page_size}, Event)

    # --- models and adapters ----------------------------------------------------------------------------

    def register_model(
        self,
        name: str,
        source: str,
        *,
        retain: Sequence[Mapping[str, Any]] = (),
        holdout: Sequence[Mapping[str, Any]] = (),
        revision: str | None = None,
        default_config: Mapping[str, Any] | None = None,
    ) -> Model:
        body = _model_body(name, source, retain, holdout, revision, default_config)
        return self._run(_ops.fetch(Call("POST", "/v1/models", json=body), Model))

    def models(self, *, page_size: int = 50) -> Iterator[Model]:
        return self._iterate("/v1/models", {"limit": page_size}, Model)

    def model(self, model_id: str) -> Model:
        return self._run(_ops.fetch(Call("GET", f"/v1/models/{model_id}"), Model))

    def adapters(self, model_id: str, *, page_size: int = 50) -> Iterator[Adapter]:
        """A model's adapter versions, newest first."""
        return self._iterate(f"/v1/models/{model_id}/adapters", {"limit": page_size}, Adapter)

    def adapter(self, adapter_id: str) -> Adapter:
        return self._run(_ops.fetch(Call("GET", f"/v1/adapters/{adapter_id}"), Adapter))

    def download_adapter(self, adapter_id: str, out: str | os.PathLike[str]) -> Adapter:
        """Download an adapter version, check its sha256 against the version's record and the response's
        `X-Adapter-SHA256`, and unpack the PEFT directory into `out` (`ApiError checksum_mismatch` if not)."""
        meta = self.adapter(adapter_id)
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "adapter.tar.gz"
            digest = hashlib.sha256()
            try:
                with self.http.stream("GET", f"/v1/adapters/{adapter_id}/download") as r:
                    if r.status_code >= 400:
                        r.read()
                        raise ApiError.from_response(r)
                    with archive.open("wb") as fh:
                        for chunk in r.iter_bytes():
                            digest.update(chunk)
                            fh.write(chunk)
                    header = r.headers.get("x-adapter-sha256")
            except httpx.TransportError as e:
                raise ApiError.unreachable(self.url, e) from None
            _verify_download(digest.hexdigest(), meta, header)
            unpack(archive, Path(out))
        return meta

    # --- audits -------------------------------------------------------------------------------------------

    def audits(
        self,
        *,
        subject: str | None = None,
        model_id: str | None = None,
        verdict: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        page_size: int = 50,
    ) -> Iterator[Audit]:
        """Audit records, newest first, every page (`subject` is the id as submitted)."""
        query = _ops.params(
            subject=subject, model_id=model_id, verdict=verdict, since=since, until=until, limit=page_size
        )
        return self._iterate("/v1/audits", query, Audit)

    def audit(self, audit_id: str) -> Audit:
        return self._run(_ops.fetch(Call("GET", f"/v1/audits/{audit_id}"), Audit))

    def certificate(self, audit_id: str) -> bytes:
        """The signed certificate, byte for byte as served (verify it with the audit public key)."""
        return self._run(_ops.fetch_bytes(Call("GET", f"/v1/audits/{audit_id}/certificate")))

    def report(self, audit_id: str) -> str:
        """The evidence report: one self-contained, printable HTML page."""
        return self._run(_ops.fetch_bytes(Call("GET", f"/v1/audits/{audit_id}/report"))).decode("utf-8")

    def verify_chain(self, *, head_seq: int | None = None, head_hash: str | None = None) -> ChainCheck:
        call = Call("GET", "/v1/audits/verify", _ops.params(head_seq=head_seq, head_hash=head_hash))
        return self._run(_ops.fetch(call, ChainCheck))

    def audit_head(self) -> dict[str, Any]:
        return self._run(_ops.fetch_json(Call("GET", "/v1/audits/head")))

    def audit_public_key(self) -> dict[str, Any]:
        return self._run(_ops.fetch_json(Call("GET", "/v1/keys/audit-public")))


class AsyncClient(_Base):
    """The same operations as `Client`, awaited (an async context manager; `aclose()` otherwise)."""

    def __init__(self, url: str | None = None, key: str | None = None, *, timeout: float = 60.0) -> None:
        super().__init__(url, key)
        self.http = httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        try:
            response = await self.http.request(
                call.method, call.path, params=call.params, json=call.json, headers=call.headers
            )
        except httpx.TransportError as e:
            raise ApiError.unreachable(self.url, e) from None
        return self._checked(response)

    async def _run(self, op: Op[T]) -> T:
        try:
            step = next(op)
            while True:
                if isinstance(step, Pause):
                    await asyncio.sleep(step.seconds)
                    step = op.send(None)
                else:
                    step = op.send(await self._send(step))
        except StopIteration as stop:
            return stop.value

    async def _iterate(self, path: str, query: dict[str, Any], item: type[T]) -> AsyncIterator[T]:
        cursor = None
        while True:
            page = await self._run(_ops.page(path, {**query, **_ops.params(cursor=cursor)}, item))
            for row in page.data:
                yield row
            if not page.has_more:
                return
            cursor = page.next

    async def forget(
        self,
        model_id: str,
        records: Sequence[Mapping[str, Any]],
        *,
        subject: str,
        legal_basis: str = "GDPR Art. 17",
        ticket: str | None = None,
        probes: Sequence[Mapping[str, str]] | None = None,
        method: str | None = None,
        init: str | None = None,
        config: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        restore_from: str | None = None,
    ) -> ForgetRequest:
        body = _ops.forget_body(
            model_id,
            records,
            subject=subject,
            legal_basis=legal_basis,
            ticket=ticket,
            probes=probes,
            method=method,
            init=init,
            config=config,
            restore_from=restore_from,
        )
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        call = Call("POST", "/v1/forget-requests", json=body, headers=headers)
        return await self._run(_ops.fetch(call, ForgetRequest))

    async def request(self, request: RequestRef) -> ForgetRequest:
        return await self._run(_ops.fetch(Call("GET", f"/v1/forget-requests/{_request_id(request)}"), ForgetRequest))

    def requests(
        self, *, status: str | None = None, model_id: str | None = None, page_size: int = 50
    ) -> AsyncIterator[ForgetRequest]:
        query = _ops.params(status=status, model_id=model_id, limit=page_size)
        return self._iterate("/v1/forget-requests", query, ForgetRequest)

    async def cancel(self, request: RequestRef) -> ForgetRequest:
        path = f"/v1/forget-requests/{_request_id(request)}/cancel"
        return await self._run(_ops.fetch(Call("POST", path), ForgetRequest))

    async def wait(
        self,
        request: RequestRef,
        *,
        timeout: float | None = None,
        interval: float = 0.5,
        on_update: Callable[[ForgetRequest], None] | None = None,
    ) -> ForgetRequest:
        op = _ops.wait(_request_id(request), timeout=timeout, interval=interval, on_update=on_update)
        return await self._run(op)

    async def job(self, job_id: str) -> Job:
        return await self._run(_ops.fetch(Call("GET", f"/v1/jobs/{job_id}"), Job))

    def events(self, job_id: str, *, page_size: int = 100) -> AsyncIterator[Event]:
        return self._iterate(f"/v1/jobs/{job_id}/events", {"limit": page_size}, Event)

    async def register_model(
        self,
        name: str,
        source: str,
        *,
        retain: Sequence[Mapping[str, Any]] = (),
        holdout: Sequence[Mapping[str, Any]] = (),
        revision: str | None = None,
        default_config: Mapping[str, Any] | None = None,
    ) -> Model:
        body = _model_body(name, source, retain, holdout, revision, default_config)
        return await self._run(_ops.fetch(Call("POST", "/v1/models", json=body), Model))

    def models(self, *, page_size: int = 50) -> AsyncIterator[Model]:
        return self._iterate("/v1/models", {"limit": page_size}, Model)

    async def model(self, model_id: str) -> Model:
        return await self._run(_ops.fetch(Call("GET", f"/v1/models/{model_id}"), Model))

    def adapters(self, model_id: str, *, page_size: int = 50) -> AsyncIterator[Adapter]:
        return self._iterate(f"/v1/models/{model_id}/adapters", {"limit": page_size}, Adapter)

    async def adapter(self, adapter_id: str) -> Adapter:
        return await self._run(_ops.fetch(Call("GET", f"/v1/adapters/{adapter_id}"), Adapter))

    async def download_adapter(self, adapter_id: str, out: str | os.PathLike[str]) -> Adapter:
        meta = await self.adapter(adapter_id)
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "adapter.tar.gz"
            digest = hashlib.sha256()
            try:
                async with self.http.stream("GET", f"/v1/adapters/{adapter_id}/download") as r:
                    if r.status_code >= 400:
                        await r.aread()
                        raise ApiError.from_response(r)
                    with archive.open("wb") as fh:
                        async for chunk in r.aiter_bytes():
                            digest.update(chunk)
                            fh.write(chunk)
                    header = r.headers.get("x-adapter-sha256")
            except httpx.TransportError as e:
                raise ApiError.unreachable(self.url, e) from None
            _verify_download(digest.hexdigest(), meta, header)
            unpack(archive, Path(out))
        return meta

    def audits(
        self,
        *,
        subject: str | None = None,
        model_id: str | None = None,
        verdict: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        page_size: int = 50,
    ) -> AsyncIterator[Audit]:
        query = _ops.params(
            subject=subject, model_id=model_id, verdict=verdict, since=since, until=until, limit=page_size
        )
        return self._iterate("/v1/audits", query, Audit)

    async def audit(self, audit_id: str) -> Audit:
        return await self._run(_ops.fetch(Call("GET", f"/v1/audits/{audit_id}"), Audit))

    async def certificate(self, audit_id: str) -> bytes:
        return await self._run(_ops.fetch_bytes(Call("GET", f"/v1/audits/{audit_id}/certificate")))

    async def report(self, audit_id: str) -> str:
        return (await self._run(_ops.fetch_bytes(Call("GET", f"/v1/audits/{audit_id}/report")))).decode("utf-8")

    async def verify_chain(self, *, head_seq: int | None = None, head_hash: str | None = None) -> ChainCheck:
        call = Call("GET", "/v1/audits/verify", _ops.params(head_seq=head_seq, head_hash=head_hash))
        return await self._run(_ops.fetch(call, ChainCheck))

    async def audit_head(self) -> dict[str, Any]:
        return await self._run(_ops.fetch_json(Call("GET", "/v1/audits/head")))

    async def audit_public_key(self) -> dict[str, Any]:
        return await self._run(_ops.fetch_json(Call("GET", "/v1/keys/audit-public")))


def _model_body(
    name: str,
    source: str,
    retain: Sequence[Mapping[str, Any]],
    holdout: Sequence[Mapping[str, Any]],
    revision: str | None,
    default_config: Mapping[str, Any] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "source": source,
        "retain": [dict(r) for r in retain],
        "holdout": [dict(r) for r in holdout],
    }
    if revision is not None:
        body["revision"] = revision
    if default_config is not None:
        body["default_config"] = dict(default_config)
    return body
