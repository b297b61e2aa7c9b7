"""bench/speed.py --quick runs end to end in-process and writes well-formed JSON: every section present, every
timing a finite positive number (no speed is asserted: CI machines are shared and noisy)."""

import json
import math

import pytest

pytestmark = pytest.mark.slow


def _positive(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_speed_quick(tmp_path):
    from bench import speed
    from bench.common import emit

    result = speed.run(quick=True, out_tmp=tmp_path / "work")
    path = emit("speed-quick", result, tmp_path)
    back = json.loads(path.read_text())

    assert set(speed.SECTIONS) <= set(back) and {"threads", "summary", "machine"} <= set(back)
    assert len(back["load_avg_start"]) == 3

    assert _positive(back["peak"]["gflops_median"])
    from bench.speed import THREAD_PROBES

    for key in THREAD_PROBES:
        assert _positive(back["threads"][key]["peak_gflops"]) and _positive(back["threads"][key]["mm256_us"])

    rows = back["loop"]["rows"]
    assert "N_mm" in back["loop"]["flop_formula"]
    assert len(rows) == len(speed.QUICK["loop_models"]) * len(speed.QUICK["loop_batches"])
    for row in rows:
        for key in ("step_seconds_median", "tokens_per_step", "achieved_gflops", "efficiency", "efficiency_6n"):
            assert _positive(row[key]), (key, row)
        assert all(_positive(v) for v in row["shape_gflops"].values())
        assert row["params_lora"] < row["params_matmul"]

    job = back["job"]
    assert _positive(job["job_seconds"]) and job["steps"] >= 1
    phases = job["phases"]
    for key in ("model load (from_pretrained)", "evaluate before", "fisher", "fila svd", "unlearning steps"):
        assert _positive(phases[key]["seconds"]), key
    assert sum(p["seconds"] for p in phases.values()) == pytest.approx(job["job_seconds"], rel=0.05)
    assert sum(p["share"] for p in phases.values()) == pytest.approx(1.0, abs=0.05)

    svc = back["service"]
    assert [j["model_cache"] for j in svc["jobs"]] == ["miss", "hit", "hit"]
    for j in svc["jobs"]:
        assert _positive(j["end_to_end_seconds"]) and _positive(j["breakdown"]["core run_forget"])
    for key in ("overhead_vs_bare", "overhead_vs_core_in_service", "cache_hit_vs_miss"):
        assert _positive(svc[key]), key

    peer = back["peer"]
    for key in ("ours_lora", "trainer_lora", "ours_fila"):
        assert _positive(peer[key]["seconds_to_stop"]) and peer[key]["steps"] >= 1, key
    assert _positive(peer["trainer_vs_ours_time"])

    levels = back["api"]["levels"]
    assert [x["concurrency"] for x in levels] == [1, 10, 50]
    for x in levels:
        for side in ("service", "bare"):
            assert x[side]["requests"] > 0 and _positive(x[side]["p50_ms"]) and _positive(x[side]["p99_ms"])
        assert _positive(x["bare"]["rps"]) and x["throughput_ratio"] >= 0

    assert "loop" in speed.table(back)
