"""The benchmark half of bench/gpu_check.sh: bench/scale's 1B and 8B rows, and the unlearning loop's
efficiency at 8B (timed first on the 8B model, so a time box never drops it) against the bf16 matmul peak
measured in the same run, into one JSON that names the device.

Time-boxed: the JSON is rewritten after every phase and row, and rows that would start after the budget are
skipped and marked, so a run cut short still leaves what it measured. `--dry-run` does the same on the CPU
with a tiny model in seconds (CI runs it, so the script stays correct).

    python -m bench.gpu_check --out DIR [--dry-run] [--budget-seconds 300] [--junit tests.xml --tests-rc N]
"""

from __future__ import annotations

import argparse
import json
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from bench import scale
from bench.common import machine
from bench.scale import log

# (sizes, forget-set sizes, steps, efficiency batch, efficiency steps) per mode
PLAN = {
    "gpu": (("1B", "8B"), (1, 10, 100), scale.STEPS, 32, 8),
    "dry": (("dry",), (1, 10), 3, 4, 5),
}
TARGETS = {"loop_efficiency_8B": 0.4, "fisher_fila_share_8B": 0.20}


def tests_summary(junit: Path | None, rc: int | None) -> dict | None:
    """Counts and recorded properties of the CUDA tests from pytest's JUnit XML."""
    if junit is None or not junit.is_file():
        return None if rc is None else {"rc": rc}
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    cases = []
    for case in suite.iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        cases.append({"name": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)), **props})
    return {"rc": rc, "cases": cases, **{k: suite.get(k) for k in ("tests", "failures", "errors", "skipped")}}


def summary(result: dict) -> dict:
    """The issue's acceptance numbers at 8B, where measured."""
    out: dict = {}
    for size in result.get("sizes", []):
        rows = [r for r in size["rows"] if "job_seconds" in r]
        if not rows:
            continue
        key = size["size"]
        out[f"job_seconds_{key}"] = {r["forget_records"]: r["job_seconds"] for r in rows}
        out[f"fisher_fila_share_{key}"] = {r["forget_records"]: r["fisher_fila_share"] for r in rows}
        out[f"peak_memory_gb_{key}"] = {r["forget_records"]: r["peak_memory_gb"] for r in rows}
        out[f"job_step_efficiency_{key}"] = {r["forget_records"]: r["step_efficiency"] for r in rows}
        if size.get("efficiency"):
            out[f"loop_efficiency_{key}"] = size["efficiency"]["efficiency"]
    if "loop_efficiency_8B" in out:
        out["meets_loop_efficiency_8B"] = out["loop_efficiency_8B"] >= TARGETS["loop_efficiency_8B"]
    if "fisher_fila_share_8B" in out:
        out["meets_fisher_fila_share_8B"] = max(out["fisher_fila_share_8B"].values()) <= TARGETS["fisher_fila_share_8B"]
    return out


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run(out_dir: Path, dry_run: bool, budget: float, junit: Path | None, tests_rc: int | None) -> Path:
    import torch

    started = time.perf_counter()
    deadline = started + budget
    device = torch.device("cpu") if dry_run else torch.device("cuda")
    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run on a CPU")
    sizes, forget_sizes, steps, eff_batch, eff_steps = PLAN["dry" if dry_run else "gpu"]
    name = scale._device_name(device)
    result: dict = {
        "device": name,
        "dry_run": dry_run,
        "machine": machine(),
        "versions": _versions(),
        "budget_seconds": budget,
        "targets": TARGETS,
        "tests": tests_summary(junit, tests_rc),
        "protocol": {
            "job": "unlearnd.core.pipeline.run_forget, ihl + fila, rank 8, defaults, no holdout: a fixed step count",
            "steps": steps,
            "forget_records": forget_sizes,
            "retain_records": scale.RETAIN_RECORDS,
            "efficiency": f"unlearnd.core.unlearn.train, {eff_batch} forget + {eff_batch} retain rows, plain LoRA",
        },
        "sizes": [],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ("gpu-check-dry-run.json" if dry_run else f"gpu-check-{device_slug(name)}.json")

    def write() -> None:
        result["elapsed_seconds"] = round(time.perf_counter() - started, 1)
        result["summary"] = summary(result)
        path.write_text(json.dumps(result, indent=2, default=str))

    write()
    corp = scale.corpus(max(max(forget_sizes), 2 * eff_batch) + scale.RETAIN_RECORDS)
    result["peak"] = scale.matmul_peak(device)
    log(f"matmul peak {result['peak']['gflops_median']} GFLOP/s ({result['peak']['dtype']}) on {name}")
    write()
    peak = result["peak"]["gflops_median"]

    def update(entry: dict) -> None:
        if not result["sizes"] or result["sizes"][-1] is not entry:
            result["sizes"].append(entry)
        write()

    for size in sizes:
        if time.perf_counter() > deadline:
            result["sizes"].append({"size": size, "skipped": "time box"})
            write()
            continue
        last = size == sizes[-1]  # the largest model: its loop efficiency is the acceptance number
        scale.run_size(
            size,
            corp,
            device,
            forget_sizes,
            steps,
            peak,
            deadline=deadline,
            on_update=update,
            efficiency=(eff_batch, eff_steps) if last else None,
        )
        write()
    log(f"wrote {path} after {result['elapsed_seconds']} s")
    return path


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "peft", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--budget-seconds", type=float, default=300.0)
    parser.add_argument("--junit", type=Path, default=None)
    parser.add_argument("--tests-rc", type=int, default=None)
    args = parser.parse_args()
    run(args.out, args.dry_run, args.budget_seconds, args.junit, args.tests_rc)


if __name__ == "__main__":
    main()
