"""Safe extraction of a downloaded adapter tarball (the SDK's copy: it must not import the server)."""

from __future__ import annotations

import tarfile
from pathlib import Path


def unpack(archive: Path, dest: Path) -> Path:
    """Extract with tarfile's `data` filter: no absolute paths, no `..`, no links out, no devices."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest
