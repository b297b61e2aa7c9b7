"""Model sources, confined to the operator's model roots (`UNLEARND_MODEL_ROOTS`).

A caller names a base model by a path: relative to a root (`support-bot`), or absolute inside one
(`/models/support-bot`). It is accepted only when it resolves (symlinks included) to a model directory, one
with a readable `config.json`, inside the root it was found in. What is stored and shown is the name relative
to that root, never the resolved path: a resolved path would reveal home directories, symlink targets or
`/proc/self`. Every refusal is the same `SourceRefused`, whatever the reason (absent, outside the roots,
unreadable, a name too long, a `~user`), so the answer tells a caller nothing about the server's other files.

Names are looked up in the roots in their configured order, the first root holding one wins; the worker
resolves the stored name again at every job with the same function, so a symlink swapped to point outside
a root after registration is refused there too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MARKER = "config.json"  # every Hugging Face model directory has one


class SourceRefused(ValueError):
    """The source does not name a model directory inside a model root (deliberately without a reason)."""


@dataclass(frozen=True)
class ModelSource:
    name: str  # relative to its root, POSIX: what is stored and shown
    path: Path  # the resolved directory: only for loading, never shown to a caller


def resolve(roots: Sequence[Path], source: str) -> ModelSource:
    """The model directory `source` names, or SourceRefused."""
    name, root_given = _name(roots, source)
    for root in roots:
        path = _model_dir(root, name)
        if path is None:
            continue
        if root_given is not None and root != root_given:
            break  # the stored name would find another root's model first: refuse rather than mix them up
        return ModelSource(name, path)
    raise SourceRefused()


def _name(roots: Sequence[Path], source: str) -> tuple[str, Path | None]:
    """The name relative to a root, and that root when the source was an absolute path inside it."""
    if not isinstance(source, str) or not source or "\x00" in source or source.startswith("~"):
        raise SourceRefused()
    path = PurePosixPath(source)
    if ".." in path.parts:
        raise SourceRefused()
    if not path.is_absolute():
        return _checked(path), None
    for root in roots:
        root_path = PurePosixPath(root)
        if path.is_relative_to(root_path):
            return _checked(path.relative_to(root_path)), root
    raise SourceRefused()


def _checked(relative: PurePosixPath) -> str:
    if not relative.parts:  # the root itself
        raise SourceRefused()
    return relative.as_posix()


def _model_dir(root: Path, name: str) -> Path | None:
    """`root/name`, resolved, when it is a model directory strictly inside the resolved root."""
    try:
        real_root = Path(os.path.realpath(root, strict=True))
        real = Path(os.path.realpath(root / name, strict=True))
        if real == real_root or not real.is_relative_to(real_root):
            return None
        marker = real / MARKER
        if not real.is_dir() or not marker.is_file() or not os.access(marker, os.R_OK):
            return None
    except (OSError, ValueError):  # missing, a loop, a name too long, no permission, a NUL byte
        return None
    return real
