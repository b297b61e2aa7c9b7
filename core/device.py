"""Device and precision: CUDA + bf16 autocast when a GPU is present, fp32 on CPU.

Precision is set per run (`UnlearnConfig.precision`) through a context variable, so every forward pass in
core (loop, Fisher, metrics) follows it without threading a flag through each call; a thread running a job
(the embedded dispatcher) sees only its own setting.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

PRECISIONS = ("auto", "fp32", "bf16")
_precision: contextvars.ContextVar[str] = contextvars.ContextVar("unlearnd_precision", default="auto")


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(device: torch.device, precision: str | None = None) -> str:
    """`auto` is bf16 on CUDA and fp32 elsewhere (bf16 matmuls are slower than fp32 on most CPUs)."""
    p = precision or _precision.get()
    if p == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return p


@contextlib.contextmanager
def use_precision(precision: str) -> Iterator[None]:
    token = _precision.set(precision)
    try:
        yield
    finally:
        _precision.reset(token)


def autocast(device: torch.device):
    """bf16 autocast for the current precision (LoRA weights and optimizer state stay fp32), else a no-op."""
    if resolve_precision(device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
