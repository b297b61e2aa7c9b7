"""What a job needs from its process: settings, database sessions, the blob store and a worker identity.

The thread dispatcher hands run_job the API's own runtime; a Celery worker builds one from the environment
(`default_runtime`). The owner id names this process in leases, so a lease can be traced to its worker. The
sessions carry the audit signing key: a worker appends audit records (and signs the chain's head) too.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from unlearnd.api.blobs import BlobStore
from unlearnd.api.certificates import load_signing_key
from unlearnd.api.db import make_engine, make_session_factory
from unlearnd.api.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    blobs: BlobStore
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    # Set when the process is shutting down: running jobs stop at the next step and go back to the queue.
    stopping: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def build(cls, settings: Settings, signing_key: Ed25519PrivateKey | None = None) -> Runtime:
        """`signing_key` defaults to the configured one (api/certificates.load_signing_key)."""
        key = signing_key or load_signing_key(settings)
        engine = make_engine(settings.resolved_database_url)
        return cls(settings, engine, make_session_factory(engine, key), BlobStore(settings.resolved_blob_dir))

    @property
    def work_dir(self) -> Path:
        path = self.settings.data_dir.resolve() / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def close(self) -> None:
        self.engine.dispose()


_default: Runtime | None = None
_default_lock = threading.Lock()


def default_runtime() -> Runtime:
    """The process-wide runtime of a standalone worker, built once from `UNLEARND_*`."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Runtime.build(Settings())
        return _default
