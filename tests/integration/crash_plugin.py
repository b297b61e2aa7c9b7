"""Loaded into a test worker with `-I tests.integration.crash_plugin`: a job on a model whose source path
contains `crash-me` kills its worker process (SIGKILL) right after the claim, every time."""

from __future__ import annotations

import os
import signal

from unlearnd.worker.model_cache import ModelCache

_borrow = ModelCache.borrow


def _crashing_borrow(self, source, device, stats=None, **kwargs):
    if "crash-me" in str(source):
        os.kill(os.getpid(), signal.SIGKILL)
    return _borrow(self, source, device, stats, **kwargs)


ModelCache.borrow = _crashing_borrow
