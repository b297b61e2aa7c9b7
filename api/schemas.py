"""HTTP request and response bodies.

Inputs reuse core's own validation (Record, Probe, UnlearnConfig) so the API and the engine can never
disagree on what is valid; method and init choices come from core's tuples (the service only publishes
adapters, so only ADAPTER_INITS are accepted).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from unlearnd.core.config import ADAPTER_INITS, METHODS
from unlearnd.core.errors import InvalidInput
from unlearnd.core.records import ROLES, Message, Record

T = TypeVar("T")

MethodName = Literal[METHODS]  # type: ignore[valid-type]
AdapterInit = Literal[ADAPTER_INITS]  # type: ignore[valid-type]

# A resource id (`mdl_3f…`) as a path, query or body value: anything else cannot name a row, and a NUL byte
# would reach PostgreSQL's driver, which refuses it with an error instead of "no such row".
ID_PATTERN = r"^[A-Za-z0-9_-]{1,40}$"
# Short labels stored as text columns (name, legal basis, ticket, revision): PostgreSQL text holds no NUL.
NO_NUL = r"^[^\x00]*$"


class _In(BaseModel):
    """Strict: a JSON `true` is not the number 1, `"5"` is not 5, `5.0` is not an int (a JSON int is still a
    valid float). Unknown fields are refused, and never echoed (api/errors.py)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class MessageIn(_In):
    role: Literal[ROLES]  # type: ignore[valid-type]
    content: str = Field(max_length=100_000)


class RecordIn(_In):
    """`{"text": ...}`, `{"prompt": ..., "completion": ...}` (only the completion is forgotten), or
    `{"messages": [{"role", "content"}, ...]}` (rendered with the model's chat template; only the assistant
    turns are forgotten)."""

    text: str | None = Field(None, max_length=100_000)
    prompt: str | None = Field(None, max_length=100_000)
    completion: str | None = Field(None, max_length=100_000)
    messages: list[MessageIn] | None = Field(None, min_length=1, max_length=1_000)

    @model_validator(mode="after")
    def _valid_record(self) -> RecordIn:
        try:
            self.to_record()
        except InvalidInput as e:
            raise ValueError(str(e)) from None
        return self

    def to_record(self) -> Record:
        messages = tuple(Message(m.role, m.content) for m in self.messages) if self.messages is not None else None
        return Record(text=self.text, prompt=self.prompt, completion=self.completion, messages=messages)


class ProbeIn(_In):
    question: str = Field(min_length=1, max_length=10_000)
    answer: str = Field(min_length=1, max_length=10_000)


class ConfigIn(_In):
    """Hyperparameters a caller may override; ranges mirror core.config.UnlearnConfig.validate."""

    rank: int | None = Field(None, ge=1, le=256)
    alpha: float | None = Field(None, gt=0, le=4096)
    lr: float | None = Field(None, gt=0, le=1.0)
    batch_size: int | None = Field(None, ge=1, le=1024)
    retain_batch_size: int | None = Field(None, ge=0, le=1024)
    retain_weight: float | None = Field(None, ge=0, le=100)
    previous_kl_weight: float | None = Field(
        None, ge=0, le=100, description="Cumulative jobs: weight of KL(previous version ‖ model) on retain data."
    )
    max_steps: int | None = Field(None, ge=1, le=100_000)
    eval_every: int | None = Field(None, ge=1, le=100_000)
    npo_beta: float | None = Field(None, gt=0, le=10)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    target_modules: list[str] | None = Field(None, min_length=1, max_length=64)
    el_n: int | None = Field(None, ge=1, le=64)
    prefix_fraction: float | None = Field(None, gt=0, lt=1)
    fisher_max_examples: int | None = Field(None, ge=1, le=100_000)
    max_length: int | None = Field(None, ge=8, le=32_768)
    eval_max_records: int | None = Field(None, ge=1, le=100_000)
    margin_weight: float | None = Field(None, ge=0, le=100, description="ctd: weight of the anchor's top-1 hinge.")
    warmup_steps: int | None = Field(None, ge=0, le=100_000, description="Linear learning-rate warm-up steps.")
    max_adapter_rank: int | None = Field(
        None, ge=8, le=512, description="Compact the cumulative adapter beyond this rank (the service's cap wins)."
    )
    compaction_steps: int | None = Field(None, ge=0, le=10_000, description="Repair steps after a compaction.")
    anchor_samples: int | None = Field(
        None, ge=0, le=100_000, description="ctd: samples of the original model its anchor holds (0: none)."
    )
    budget_records: int | None = Field(
        None, ge=0, le=10_000_000, description="Forget records max_steps is sized for; more get more steps (0: fixed)."
    )
    test_alpha: float | None = Field(None, gt=0, lt=1, description="Verdict: level of the two-sided U test.")
    auc_tolerance: float | None = Field(None, gt=0, le=0.5, description="Verdict: every AUC within 0.5 ± this.")
    tail_p: float | None = Field(None, ge=0, lt=1, description="Verdict: family-wise level of the tail check.")
    attack_prefix_tokens: list[int] | None = Field(
        None, max_length=8, description="Extraction is attacked from these first-token counts too."
    )
    max_retain_ma_drop: float | None = Field(None, ge=0, le=1, description="Kept: retain MA drop at most.")
    min_retain_extraction_kept: float | None = Field(
        None, ge=0, le=1, description="Kept: short-prefix retain extraction at least this share of the original's."
    )
    max_perplexity_ratio: float | None = Field(
        None, ge=1, le=100, description="Kept: holdout perplexity at most this multiple of the original's."
    )

    def overrides(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class SubjectIn(_In):
    id: str = Field(min_length=1, max_length=500, description="The data subject's id in the caller's system.")
    legal_basis: str = Field(min_length=1, max_length=200, pattern=NO_NUL, description="e.g. 'GDPR Art. 17'.")
    ticket: str | None = Field(None, max_length=200, pattern=NO_NUL)


class ForgetRequestIn(_In):
    model_id: str = Field(pattern=ID_PATTERN)
    subject: SubjectIn
    records: list[RecordIn] = Field(min_length=1, max_length=10_000)
    probes: list[ProbeIn] = Field(default_factory=list, max_length=1_000)
    method: MethodName | None = None
    init: AdapterInit | None = None
    config: ConfigIn | None = None
    restore_from: str | None = Field(
        None,
        pattern=ID_PATTERN,
        description="For corrupting documents (wrong or poisoned data): the id of a registered model that is the "
        "checkpoint from before them, same tokenizer. The `restore` method (the default when this is set) "
        'distils it on the records, so the facts they overwrote come back (README "Restoration").',
    )


class ModelDefaultsIn(ConfigIn):
    method: MethodName | None = None
    init: AdapterInit | None = None


class ModelIn(_In):
    name: str = Field(min_length=1, max_length=200, pattern=NO_NUL)
    source: str = Field(
        min_length=1,
        max_length=4096,
        description="A local Hugging Face model directory inside one of the server's model roots "
        "(UNLEARND_MODEL_ROOTS): relative to the root, or an absolute path inside it.",
    )
    revision: str | None = Field(None, max_length=200, pattern=NO_NUL)
    retain: list[RecordIn] = Field(default_factory=list, max_length=100_000)
    holdout: list[RecordIn] = Field(default_factory=list, max_length=100_000)
    default_config: ModelDefaultsIn | None = None


class ModelOut(BaseModel):
    id: str
    name: str
    source: str = Field(description="The model directory, relative to its model root.")
    revision: str | None
    fingerprint: str | None
    default_config: dict[str, Any]
    retain_count: int
    holdout_count: int
    retain_sha256: str = Field(description="sha256 of the retain set's canonical JSON (the set is never shown).")
    holdout_sha256: str = Field(description="sha256 of the holdout set's canonical JSON.")
    active_adapter: AdapterRef | None
    created_at: datetime


class AdapterRef(BaseModel):
    id: str
    version: int


class ProgressOut(BaseModel):
    phase: str | None = Field(description="fisher | unlearning | evaluating | exporting; `done` once the job ended.")
    step: int
    total: int
    metrics: dict[str, Any]


class JobOut(BaseModel):
    id: str
    model_id: str
    status: str
    attempts: int
    cancel_requested: bool
    progress: ProgressOut
    request_ids: list[str]
    config: dict[str, Any]
    error: str | None
    error_code: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ForgetRequestOut(BaseModel):
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
    progress: ProgressOut
    adapter_version: AdapterRef | None
    audit_id: str | None
    verdict: str | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None


class EventOut(BaseModel):
    id: int
    created_at: datetime
    level: str
    type: str
    message: str
    data: dict[str, Any]


class AdapterOut(BaseModel):
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


class AuditOut(BaseModel):
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


class SignatureOut(BaseModel):
    alg: Literal["Ed25519"]
    key_id: str
    value: str = Field(description="Base64 Ed25519 signature of the canonical JSON without `signature`.")


class ChainHeadOut(BaseModel):
    """The audit chain's newest record, signed with the audit key (api/chain_head.py)."""

    format: str
    seq: int = Field(description="seq of the newest audit record.")
    hash: str = Field(description="hash of the newest audit record.")
    signed_at: str | None
    signature: SignatureOut | None = Field(description="Over the canonical JSON of the other members.")


class ChainOut(BaseModel):
    ok: bool
    checked: int
    total: int
    first_broken_seq: int | None
    reason: str | None
    head_hash: str | None = Field(description="hash of the newest record, when the chain is intact.")
    head: ChainHeadOut | None = Field(description="The stored signed head the chain was checked against.")
    missing_from_seq: int | None = Field(description="First seq of the records found missing, if any.")
    missing_to_seq: int | None = Field(description="Last seq of the records found missing, if any.")


class CertificateOut(BaseModel):
    """An unlearning certificate (api/certificates.py): the audit record's fields, signed."""

    model_config = ConfigDict(extra="allow")

    format: str
    issuer: str
    issued_at: str
    audit_id: str
    seq: int
    request_id: str
    subject_hash: str
    record_hashes: list[str]
    record_salt: str | None
    record_hash_algorithm: str
    model_id: str
    model_fingerprint: str | None
    adapter_version_id: str | None
    adapter_version: int | None
    adapter_sha256: str | None
    metrics: dict[str, Any]
    thresholds: dict[str, Any]
    verdict: str
    requested_at: str
    completed_at: str
    prev_hash: str
    hash: str
    chained_fields: list[str]
    signature: SignatureOut


class PublicKeyOut(BaseModel):
    alg: Literal["Ed25519"]
    key_id: str
    public_key: str = Field(description="Base64 of the raw 32-byte public key.")
    pem: str


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool
    next: str | None = Field(None, description="Pass as `cursor` to get the next page.")


ModelOut.model_rebuild()
