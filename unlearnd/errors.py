"""The SDK's one exception: the service answered with an error body, or could not be reached, or a download
did not hash to what the service announced. `code` is the API's machine-readable code in every case."""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(Exception):
    """`status` is the HTTP status (0 when no answer came: `unreachable`, `checksum_mismatch`)."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """The error of a 4xx/5xx answer: its `{"error": {code, message, details}}`, or its first 200
        characters when a proxy in between answered with something else."""
        try:
            err = response.json()["error"]
            return cls(response.status_code, err["code"], err["message"], err.get("details"))
        except (ValueError, KeyError, TypeError):
            return cls(response.status_code, "http_error", response.text[:200])

    @classmethod
    def unreachable(cls, url: str, error: Exception) -> ApiError:
        return cls(0, "unreachable", f"cannot reach {url}: {error}")
