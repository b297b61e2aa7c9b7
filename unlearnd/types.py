"""Typed views of the API's response bodies (api/schemas.py's `…Out` models, field for field; a test keeps
them equal). They accept fields a newer server adds, so an old client keeps working against it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")

FINAL_STATUSES = ("succeeded", "failed", "cancelled")


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Page(_Out, Generic[T]):
    data: list[T]
    has_more: bool
    next: str | None


class AdapterRef(_Out):
    id: str
    version: int


class Progress(_Out):
    phase: str | None
    step: int
    total: int
    metrics: dict[str, Any]


class ForgetRequest(_Out):
    id: str
    status: str
    job_id: str
    model_id: str
    subject_hash: str
    legal_basis: str
    ticket: str | None
    record_count: int
    record_hashes: list[str]
    probe_count: int
    config: dict[str, Any]
    progress: Progress
    adapter_version: AdapterRef | None
    audit_id: str | None
    verdict: str | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES


class Job(_Out):
    id: str
    model_id: str
    status: str
    attempts: int
    cancel_requested: bool
    progress: Progress
    request_ids: list[str]
    config: dict[str, Any]
    error: str | None
    error_code: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class Event(_Out):
    id: int
    created_at: datetime
    level: str
    type: str
    message: str
    data: dict[str, Any]


class Model(_Out):
    id: str
    name: str
    source: str
    revision: str | None
    fingerprint: str | None
    default_config: dict[str, Any]
    retain_count: int
    holdout_count: int
    retain_sha256: str | None
    holdout_sha256: str | None
    active_adapter: AdapterRef | None
    created_at: datetime


class Adapter(_Out):
    id: str
    model_id: str
    version: int
    parent_id: str | None
    job_id: str
    rank: int
    alpha: float
    target_modules: list[str]
    sha256: str
    size_bytes: int
    status: str
    created_at: datetime
    download_url: str


class Audit(_Out):
    id: str
    seq: int
    request_id: str
    model_id: str
    job_id: str
    adapter_version_id: str | None
    subject_hash: str
    legal_basis: str
    ticket: str | None
    record_hashes: list[str]
    model_fingerprint: str | None
    adapter_sha256: str | None
    verdict: str
    method: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    thresholds: dict[str, Any]
    error: str | None
    requested_at: datetime
    completed_at: datetime
    prev_hash: str
    hash: str


class ChainCheck(_Out):
    ok: bool
    checked: int
    total: int
    first_broken_seq: int | None
    reason: str | None
    head_hash: str | None
    head: dict[str, Any] | None
    missing_from_seq: int | None
    missing_to_seq: int | None
