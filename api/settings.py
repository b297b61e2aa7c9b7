"""All configuration of the service, from `UNLEARND_*` environment variables, with embedded defaults.

The defaults need no setup at all: a SQLite file and a blob directory under `UNLEARND_DATA_DIR` and a thread
dispatcher inside the API process. Production swaps the URLs and the dispatcher, nothing else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Development secrets: fine on a laptop, refused when UNLEARND_ENVIRONMENT=production.
DEV_SECRET_KEY = "unlearnd-development-secret-do-not-use-in-production"


class Settings(BaseSettings):
    """One flat settings class; every field is `UNLEARND_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="UNLEARND_", extra="ignore", frozen=True)

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Field(Path("./data"), description="Root of the embedded database and blob store.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<data_dir>/unlearnd.db")
    blob_dir: Path | None = Field(None, description="Adapter tarballs; default <data_dir>/blobs")
    model_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Directories whose model directories may be registered as sources (PATH-style list or a "
        "JSON list); default <data_dir>/models alone.",
    )
    dispatcher: Literal["thread", "celery"] = "thread"
    broker_url: str = "redis://127.0.0.1:6379/0"
    celery_queue: str = Field("gpu", min_length=1, description="Queue of the Celery job task (workers: -Q).")
    broker_key_prefix: str = Field("", description="Prefix of every Redis key of the broker (shared Redis).")
    broker_visibility_timeout_seconds: float = Field(
        86400.0, gt=0, description="Redis redelivers an unacknowledged task after this; keep it above the longest job."
    )
    worker_threads: int = Field(1, ge=1, le=64, description="Concurrent jobs of the thread dispatcher.")
    max_requests_per_job: int = Field(
        32, ge=1, le=1000, description="Requests of one model that wait for its next job are served by it, up to this."
    )
    batch_window_seconds: float = Field(
        0.0, ge=0, le=3600, description="A new job waits this long before it is dispatched, gathering requests."
    )
    max_adapter_rank: int = Field(
        64, ge=8, le=512, description="No published adapter version exceeds this rank (compacted beyond it)."
    )
    lease_seconds: float = Field(60.0, gt=0, description="A claimed job is the worker's for this long.")
    sweep_interval_seconds: float = Field(5.0, gt=0)
    redispatch_after_seconds: float = Field(
        60.0, ge=0, description="A queued job dispatched longer ago than this is dispatched again."
    )
    max_attempts: int = Field(3, ge=1, le=100, description="Claims per job before it fails for good.")
    progress_interval_seconds: float = Field(0.5, ge=0, description="Minimum time between progress writes.")
    secret_key: SecretStr = Field(
        SecretStr(DEV_SECRET_KEY), description="HMAC key of API keys, subject references, payload encryption."
    )
    bootstrap_key: SecretStr | None = Field(None, description="Ensure an admin API key with this secret exists.")
    model_cache_size: int = Field(1, ge=0, le=16, description="Base models kept loaded in a worker process.")
    device: str | None = Field(None, description="Torch device of the worker; default cuda if present.")
    worker_gpus: str | None = Field(
        None,
        pattern=r"^\s*\d+(\s*,\s*\d+)*\s*$",
        description="GPUs (indices as the worker sees them, e.g. 0,1,2,3) one model is placed across: for models "
        "larger than one GPU; each job then uses all of them.",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        le=512,
        description="CPU threads of torch in a worker; default: physical cores, capped by the "
        "CPUs the process may use (affinity, cgroup quota).",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Security and compliance (README "Security and compliance"): limits, rate limit, idempotency, audit signing key.
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Larger request bodies are refused (413).")
    body_read_timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description="A request body not received in full by then is refused (408)."
    )
    api_docs: bool | None = Field(
        None, description="Serve /docs, /redoc and /openapi.json (without a key); default: only in development."
    )
    max_records_per_request: int = Field(1_000, ge=1, le=10_000, description="Records in one forget request.")
    max_record_chars: int = Field(20_000, ge=1, le=100_000, description="Characters of one record or probe.")
    max_probes_per_request: int = Field(200, ge=0, le=1_000, description="Probes in one forget request.")
    rate_limit_per_minute: float = Field(1200.0, ge=0, description="Requests per API key and minute; 0 = off.")
    rate_limit_burst: int = Field(200, ge=1, description="Requests a key may make at once before being limited.")
    idempotency_ttl_seconds: float = Field(86_400.0, gt=0, description="How long an Idempotency-Key is kept.")
    audit_signing_key: SecretStr | None = Field(None, description="Ed25519 private key (PEM) of certificates.")
    audit_signing_key_file: Path | None = Field(
        None, description="PEM file of the Ed25519 key; default <data_dir>/audit-signing-key.pem (development)."
    )

    @field_validator("model_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        """`UNLEARND_MODEL_ROOTS=/models:/mnt/hf` (like PATH) or a JSON list; empty entries are dropped."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part.strip()]
        return value

    @model_validator(mode="after")
    def _servable_rank(self) -> Settings:
        """A rank LoRA-serving engines accept (vLLM's max_lora_rank choices), so no padding takes it beyond."""
        if self.max_adapter_rank not in (8, 16, 32, 64, 128, 256, 320, 512):
            raise ValueError("UNLEARND_MAX_ADAPTER_RANK must be one of 8, 16, 32, 64, 128, 256, 320, 512")
        return self

    @model_validator(mode="after")
    def _no_dev_secret_in_production(self) -> Settings:
        if self.environment == "production" and self.secret_key.get_secret_value() == DEV_SECRET_KEY:
            raise ValueError("UNLEARND_SECRET_KEY must be set to a real secret when UNLEARND_ENVIRONMENT=production")
        return self

    @model_validator(mode="after")
    def _signing_key_in_production(self) -> Settings:
        """Certificates are only worth their key: production never generates one silently."""
        if self.environment == "production" and self.audit_signing_key is None and self.audit_signing_key_file is None:
            raise ValueError(
                "UNLEARND_AUDIT_SIGNING_KEY or UNLEARND_AUDIT_SIGNING_KEY_FILE must be set when "
                "UNLEARND_ENVIRONMENT=production"
            )
        return self

    @property
    def docs_enabled(self) -> bool:
        return self.api_docs if self.api_docs is not None else self.environment == "development"

    @property
    def resolved_signing_key_file(self) -> Path:
        return (self.audit_signing_key_file or self.data_dir / "audit-signing-key.pem").resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'unlearnd.db').resolve()}"

    @property
    def resolved_blob_dir(self) -> Path:
        return (self.blob_dir or self.data_dir / "blobs").resolve()

    @property
    def worker_devices(self) -> list[str] | None:
        """`worker_gpus` as torch devices (`cuda:0`, `cuda:1`, ...), or None: one device (`device`)."""
        if not self.worker_gpus:
            return None
        return [f"cuda:{int(i)}" for i in self.worker_gpus.split(",")]

    @property
    def resolved_model_roots(self) -> tuple[Path, ...]:
        """Absolute, in the configured order (the first root holding a name wins); not symlink-resolved, so a
        source given as an absolute path is matched against the roots as the operator wrote them."""
        roots = self.model_roots or [self.data_dir / "models"]
        return tuple(Path(os.path.abspath(root)) for root in roots)
