"""A small HTTP client of the unlearnd API for the CLI (and the demo): it knows the error shape, the
download verification and how to wait for a request; it never imports the server stack."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
FINAL = ("succeeded", "failed", "cancelled")


def wait_for_request(http: httpx.Client, request_id: str, timeout: float = 300.0, interval: float = 0.2) -> dict:
    """Poll `GET /v1/forget-requests/{id}` on an authenticated client until the request ends (its body), or
    raise TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        body = http.get(f"/v1/forget-requests/{request_id}").raise_for_status().json()
        if body["status"] in FINAL:
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"request {request_id} still {body['status']} after {timeout} s")
        time.sleep(interval)


class ApiFailure(Exception):
    """The server answered with an error body (or could not be reached)."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details


def _failure(r: httpx.Response) -> ApiFailure:
    """The ApiFailure of an error response: its code and message, or its first 200 characters."""
    try:
        err = r.json()["error"]
        return ApiFailure(r.status_code, err["code"], err["message"], err.get("details"))
    except (ValueError, KeyError, TypeError):
        return ApiFailure(r.status_code, "http_error", r.text[:200])


class Client:
    def __init__(self, url: str | None = None, key: str | None = None, timeout: float = 60.0) -> None:
        self.url = (url or os.environ.get("UNLEARND_URL") or DEFAULT_URL).rstrip("/")
        key = key or os.environ.get("UNLEARND_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response of a request that succeeded; ApiFailure for an error body or an unreachable server."""
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        if r.status_code >= 400:
            raise _failure(r)
        return r

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.send(method, path, **kwargs)
        return r.json() if r.content else None

    def _unreachable(self, error: Exception) -> ApiFailure:
        return ApiFailure(0, "unreachable", f"cannot reach {self.url}: {error}")

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        return self.request("POST", path, json=body, headers=headers)

    def wait(
        self, request_id: str, on_update: Callable[[dict, dict], None] | None = None, interval: float = 0.5
    ) -> dict:
        """Poll a forget request until it ends; `on_update(request, job)` sees every poll."""
        while True:
            req = self.get(f"/v1/forget-requests/{request_id}")
            if on_update is not None:
                on_update(req, self.get(f"/v1/jobs/{req['job_id']}"))
            if req["status"] in FINAL:
                return req
            time.sleep(interval)

    def download_adapter(self, adapter_id: str, out: Path) -> dict:
        """Download the tarball, check its sha256 against the header and the metadata, then unpack it."""
        from api.archive import unpack

        meta = self.get(f"/v1/adapters/{adapter_id}")
        digest = hashlib.sha256()
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "adapter.tar.gz"
            try:
                with self.http.stream("GET", f"/v1/adapters/{adapter_id}/download") as r:
                    if r.status_code >= 400:
                        r.read()
                        raise _failure(r)
                    header = r.headers.get("x-adapter-sha256")
                    with archive.open("wb") as fh:
                        for chunk in r.iter_bytes():
                            digest.update(chunk)
                            fh.write(chunk)
            except httpx.TransportError as e:
                raise self._unreachable(e) from None
            actual = digest.hexdigest()
            if actual != meta["sha256"] or actual != header:
                raise ApiFailure(0, "checksum_mismatch", f"sha256 {actual} ≠ expected {meta['sha256']}")
            unpack(archive, out)
        return meta
