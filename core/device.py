"""Device and precision: CUDA + bf16 autocast when a GPU is present, fp32 on CPU.

Precision is set per run (`UnlearnConfig.precision`) through a context variable, so every forward pass in
core (loop, Fisher, metrics) follows it without threading a flag through each call; a thread running a job
(the embedded dispatcher) sees only its own setting.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")
PRECISIONS = ("auto", "fp32", "bf16")
_precision: contextvars.ContextVar[str] = contextvars.ContextVar("unlearnd_precision", default="auto")
_TORCH_DEFAULT_THREADS = torch.get_num_threads()  # torch's pick: the machine's physical cores
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


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


def usable_cpus(cgroup_cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota. torch counts the
    machine's cores, so in a container limited to fewer its threads wait on each other at every barrier."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def set_cpu_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads for a worker: `threads` if configured, else torch's own default (physical
    cores) capped by the usable CPUs. Process-wide; returns the number set."""
    n = threads or min(_TORCH_DEFAULT_THREADS, usable_cpus())
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def in_own_thread(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run torch work in a short-lived thread and return its result (re-raising its exception). OpenMP keeps
    a thread team per thread that ran parallel ops, and a team of the main thread lives as long as the
    process: once the main thread has used torch, small ops in every other thread (the dispatcher's jobs)
    run ≈ 1.6× slower on 2 cores (`bench/speed.py` threads probe). A worker thread's team ends with it."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    thread = threading.Thread(target=target, name="torch-work")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
