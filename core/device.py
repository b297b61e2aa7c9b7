"""Device and precision choice: CUDA + bf16 autocast when a GPU is present, fp32 on CPU."""

from __future__ import annotations

import contextlib

import torch


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device):
    """bf16 autocast on CUDA (LoRA weights and optimizer state stay fp32); a no-op on CPU, where bf16
    matmuls are slower than fp32 and tests need exact fp32 results."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
