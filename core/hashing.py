"""File hashing shared by core and the API (torch-free, so `api/` may import it)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def update_from_file(digest, path: Path) -> None:
    """Feed a file into a hashlib digest in 1 MiB chunks (weights and adapters do not fit comfortably in memory)."""
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    update_from_file(digest, path)
    return digest.hexdigest()
