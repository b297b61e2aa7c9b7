"""bench/gpu_check.sh stays correct without a GPU: its CPU dry run goes through every phase (the CUDA tests,
skipped here; bench/scale's rows; the loop efficiency) and writes the JSON that names the device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_phase(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((tmp_path / "gpu-check-dry-run.json").read_text())
    assert result["dry_run"] is True and "CPU" in result["device"]
    assert result["tests"]["rc"] == 0 and len(result["tests"]["cases"]) >= 3  # collected (skipped without CUDA)
    assert result["peak"]["gflops_median"] > 0
    (size,) = result["sizes"]
    assert [r["forget_records"] for r in size["rows"]] == [1, 10]
    for row in size["rows"]:
        assert row["job_seconds"] > 0 and row["peak_memory_gb"] > 0 and row["export_max_abs_diff"] <= 1e-4
        assert set(row["phases_seconds"]) >= {"evaluate_before", "fisher_fila", "unlearning", "evaluate_after"}
        assert abs(sum(row["phase_shares"].values()) - 1) < 0.02
        assert 0 < row["step_efficiency"] < 1.5
    assert 0 < size["efficiency"]["efficiency"] < 1.5
    assert "loop_efficiency_dry" in result["summary"]
    assert "tests rc=0" in run.stdout and "bench rc=0" in run.stdout  # timestamped progress lines
