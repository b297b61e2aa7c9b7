"""Deterministic tar.gz of an adapter directory, and safe extraction.

Deterministic (sorted names, zero mtimes/owners, no gzip timestamp) so the same adapter always has the same
sha256: the tarball's sha256 is the adapter's identity (ETag, X-Adapter-SHA256, audit record).
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

from unlearnd.core.hashing import file_sha256


def pack_dir(src: Path, dest: Path) -> tuple[str, int]:
    """Write `src`'s files to `dest` as tar.gz; return (sha256, size in bytes)."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            info = tarfile.TarInfo(path.relative_to(src).as_posix())
            info.size = path.stat().st_size
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as out, gzip.GzipFile(filename="", fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return file_sha256(dest), dest.stat().st_size


def unpack(archive: Path, dest: Path) -> Path:
    """Extract with tarfile's `data` filter: no absolute paths, no `..`, no links out, no devices."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest
