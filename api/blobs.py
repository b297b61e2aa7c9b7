"""The blob store of adapter tarballs: a local directory addressed by `local:<key>` URIs.

URIs are relative to the store's root so a data directory can move; another backend (S3, …) would only
add a scheme.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_SCHEME = "local:"


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def put(self, src: Path, key: str) -> str:
        """Move `src` into the store under `key` atomically; return its URI."""
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        return f"{_SCHEME}{key}"

    def path(self, uri: str) -> Path:
        if not uri.startswith(_SCHEME):
            raise ValueError(f"unsupported blob URI {uri!r}")
        path = (self.root / uri.removeprefix(_SCHEME)).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"blob URI escapes the store: {uri!r}")
        return path
