"""Base models kept loaded across jobs in a worker process (loading is the slow part of a small job).

Keyed by the resolved source directory, the device and the files' sizes and mtimes, so replaced weights are
loaded again; core's run_forget leaves the model as it found it, which is what makes reuse safe. A borrowed
model is lent to one job at a time.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _stat_key(source: Path) -> tuple[tuple[str, int, int], ...]:
    if not source.is_dir():
        return ()
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(source.iterdir()) if p.is_file())


@dataclass
class _Entry:
    loaded: Any
    lock: threading.Lock = field(default_factory=threading.Lock)


class ModelCache:
    def __init__(self, capacity: int = 1) -> None:
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    @contextmanager
    def borrow(
        self,
        source: str,
        device: str | None,
        stats: dict[str, Any] | None = None,
        devices: list[str] | None = None,
    ) -> Iterator[Any]:
        """Yield a `core.modeling.LoadedModel` for `source`, loading it unless a cached copy is current.
        `devices`: several GPUs the model is placed across (core/placement.py) instead of `device`.
        `stats`, if given, receives `hit` (bool) and `load_seconds` (time to get the model, waits included)."""
        from unlearnd.core.modeling import load_model

        started = time.perf_counter()
        path = Path(source).expanduser().resolve()
        key = (str(path), device, tuple(devices or ()), _stat_key(path))
        with self._lock:
            entry = self._entries.get(key)
            hit = entry is not None
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
                entry = _Entry(load_model(path, device=device, devices=devices))
                if self.capacity > 0:
                    self._entries[key] = entry
                    while len(self._entries) > self.capacity:
                        self._entries.popitem(last=False)
        with entry.lock:
            if stats is not None:
                stats.update(hit=hit, load_seconds=time.perf_counter() - started)
            yield entry.loaded

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_cache: ModelCache | None = None
_cache_lock = threading.Lock()


def model_cache(capacity: int) -> ModelCache:
    """The process's cache (one per process: models are big)."""
    global _cache
    with _cache_lock:
        if _cache is None:
            _cache = ModelCache(capacity)
        return _cache
