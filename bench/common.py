"""Shared bench plumbing: worlds, machine description, mean ± sd, JSON + plot output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
CACHE = ROOT / ".cache" / "worlds"


def pii_world(quick: bool):
    """The default demo world (cached), or the CI-sized one for --quick."""
    from unlearnd.core.worlds.pii import WorldSpec, build_world, tiny_spec

    spec = tiny_spec() if quick else WorldSpec()
    return build_world(CACHE / f"pii-{spec.key()}", spec, log=lambda m: print(m, file=sys.stderr))


def machine() -> dict:
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout
    except OSError:
        commit = ""
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "commit": commit.strip(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def mean_sd(values: list[float]) -> dict:
    vals = [v for v in values if v == v]  # drop NaN
    if not vals:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def emit(name: str, result: dict, out_dir: Path | None = None) -> Path:
    """Print the JSON result and write it to bench/out/<name>.json (the plot goes beside it)."""
    out_dir = out_dir or OUT
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    text = json.dumps(result, indent=2, default=float)
    path.write_text(text)
    print(text)
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def wait_for_request(http, request_id: str, timeout: float = 300.0, interval: float = 0.2) -> dict:
    """Poll `GET /v1/forget-requests/{id}` on an authenticated httpx client until the request ends (its
    body), or raise TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        body = http.get(f"/v1/forget-requests/{request_id}").raise_for_status().json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"request {request_id} still {body['status']} after {timeout} s")
        time.sleep(interval)
