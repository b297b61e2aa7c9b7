"""One exception type per error code, and the one handler that renders them all.

Every error body is `{"error": {"code", "message", "details"}}`: clients branch on `code`, people read
`message`. Error bodies never echo submitted values (they may be the personal data to erase): not a field's
value, not an unknown field's name, not an id, a cursor or a model source.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("unlearnd.api")


class ApiError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, details: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str = "missing or invalid API key", details: Any = None) -> None:
        super().__init__(message, details, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


class InsufficientScope(Forbidden):
    code = "insufficient_scope"


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "payload_too_large"


class RequestTimeout(ApiError):
    """The body was not received in full within UNLEARND_BODY_READ_TIMEOUT_SECONDS (api/guard.py)."""

    status_code = 408
    code = "request_timeout"


class RateLimited(ApiError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int, details: Any = None) -> None:
        super().__init__(message, details, headers={"Retry-After": str(retry_after)})


class IdempotencyKeyReused(ApiError):
    """IETF draft: the same key with a different request is a client error."""

    status_code = 422
    code = "idempotency_key_reused"


class IdempotencyKeyInFlight(ApiError):
    """IETF draft: a retry while the first request with this key is still being processed."""

    status_code = 409
    code = "idempotency_key_in_flight"


class LimitExceeded(ApiError):
    """Records per request, characters per record, probes per request (the body-size limit is 413)."""

    status_code = 422

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message, details)
        self.code = code


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class AlreadyFinished(ApiError):
    status_code = 409
    code = "already_finished"


class InvalidConfig(ApiError):
    status_code = 422
    code = "invalid_config"


class HoldoutRequired(ApiError):
    """The method calibrates against the model's holdout set (never-seen records) and the model has too few."""

    status_code = 422
    code = "holdout_required"


class InvalidRestoreFrom(ApiError):
    """`restore_from` names no other model of the caller's tenant."""

    status_code = 422
    code = "invalid_restore_from"


class InvalidModelSource(ApiError):
    status_code = 422
    code = "invalid_model_source"


class ChatTemplateMissing(ApiError):
    """Conversation records for a model whose directory has no chat template to render them with."""

    status_code = 422
    code = "chat_template_missing"


class InvalidCursor(ApiError):
    status_code = 422
    code = "invalid_cursor"


class NotReady(ApiError):
    status_code = 503
    code = "not_ready"


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    """loc, msg and type of each error, never its input. An unknown field's name is input too (a caller may
    have put anything in it), so its error points at the object that holds it."""
    details = []
    for e in exc.errors():
        loc, msg = list(e.get("loc", ())), e.get("msg", "")
        if e.get("type") == "extra_forbidden":
            loc, msg = loc[:-1], "unknown field (only the documented fields are accepted)"
        details.append({"loc": loc, "msg": msg, "type": e.get("type", "")})
    return details


def invalid_query(names: tuple[str, ...], message: str) -> RequestValidationError:
    """A `422 validation_error` for query parameters that are valid one by one but not together."""
    return RequestValidationError([{"loc": ("query", name), "msg": message, "type": "value_error"} for name in names])


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.details), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return JSONResponse(error_body("validation_error", f"{where}: {first['msg']}", details), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal_error", "internal server error"), 500)


class BlobMissing(ApiError):
    status_code = 410
    code = "blob_missing"


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable; clients branch on it.")
    message: str
    details: Any = None


class ErrorOut(BaseModel):
    """The body of every 4xx and 5xx answer."""

    error: ErrorDetail


def _described(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


# Documented on every route, so the OpenAPI schema (and the fuzz test) knows every answer the API gives.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _described("Malformed request"),
    401: _described("Missing, unknown or revoked API key"),
    403: _described("The key lacks the scope this endpoint needs"),
    404: _described("Unknown id, or an id of another tenant"),
    408: _described("The request body did not arrive within UNLEARND_BODY_READ_TIMEOUT_SECONDS"),
    409: _described("Conflict (duplicate, already finished, Idempotency-Key in flight)"),
    413: _described("Request body larger than UNLEARND_MAX_BODY_BYTES"),
    422: _described("Invalid body, query or header; a limit exceeded; Idempotency-Key reused"),
    429: _described("Rate limit of the API key exceeded; see Retry-After"),
}
