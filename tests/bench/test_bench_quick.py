"""The benchmarks' --quick mode runs end to end and produces well-formed JSON and plots (no research outcome
is asserted here: that is what the full runs in the README are for)."""

import json
import math

import pytest

pytestmark = pytest.mark.slow


def _finite(x):
    return isinstance(x, int | float) and math.isfinite(x)


def test_forgetting_quick(tmp_path):
    from bench import forgetting
    from bench.common import emit

    result = forgetting.run(quick=True, seeds=1, sizes=[2], max_steps=8)
    path = emit("forgetting", result, tmp_path)
    forgetting.plot(result, path.with_suffix(".png"))
    back = json.loads(path.read_text())
    assert {(r["method"], r["init"]) for r in back["results"]} == set(forgetting.QUICK_GRID)
    for row in back["results"]:
        assert row["forget_size"] == 2 and _finite(row["steps"]["mean"]) and row["trainable_params"] > 0
        assert len(row["outcomes"]) == 1 and 0.0 <= row["forgotten"] <= 1.0
        for key in (
            "loss_auc",
            "zlib_p",
            "min_k_auc_fresh",
            "retain_ma_drop",
            "retain_extraction_kept",
            "generic_perplexity_ratio",
            "seconds",
        ):
            assert _finite(row[key]["mean"]), key
    assert path.with_suffix(".png").stat().st_size > 1000


def test_stream_quick(tmp_path):
    from bench import stream
    from bench.common import emit

    result = stream.run(quick=True, requests=2, per_request=2, burst_size=3)
    path = emit("stream", result, tmp_path)
    stream.plot(result, path.with_suffix(".png"))
    back = json.loads(path.read_text())
    seq, burst = back["sequential"], back["burst"]
    assert [v["request"] for v in seq["versions"]] == [0, 1, 2] and len(seq["outcomes"]) == 2
    for v in seq["versions"][1:]:
        if "metrics" in v:  # published: measured from disk, every earlier request's records included
            assert v["export_max_abs_diff"] <= 1e-4 and v["rank"] <= 64
            assert {f"request_{i}" for i in range(1, v["request"] + 1)} <= set(v["metrics"])
    assert burst["requests"] == 3 and 1 <= burst["jobs"] <= 3 and len(burst["verdicts"]) == 3
    assert burst["audits"] == 3 and burst["certificates"] == 3  # every request its own audit and certificate
    assert _finite(burst["ratio_to_single"])


def test_restor_quick_clean_knows_corruption_hits_only_its_targets(tmp_path):
    from bench import restor
    from bench.common import emit

    result = restor.run(quick=True, seeds=1, levels=["none"])
    path = emit("restor", result, tmp_path)
    restor.plot(result, path.with_suffix(".png"))
    back = json.loads(path.read_text())
    assert {(r["method"], r["init"]) for r in back["runs"]} == set(restor.QUICK_GRID)
    # the bars that hold on the CI-sized world too
    ok = back["acceptance"]
    assert ok["clean_min"] >= 0.95 and ok["corrupted_max"] <= 0.2 and ok["untouched_kept_min"] >= 0.9
    for b in back["baselines"]:
        assert b["corruption"]["reached"] and b["clean"]["p_correct"] > b["clean"]["p_injected"]
        assert b["corrupted"]["p_injected"] > b["clean"]["p_injected"]  # the injected answers took hold
        # the kept corruption is the last attempt, the first without spill-over (a gentler retry on spill-over)
        tries = b["corruption"]["attempts"]
        assert tries[-1]["lr"] == b["corruption"]["lr"] and tries[-1]["untouched_kept"] >= 0.9
        assert all(t["untouched_kept"] < 0.9 for t in tries[:-1])
    for r in back["runs"]:
        for key in ("accuracy", "p_correct", "p_injected", "untouched_accuracy"):
            assert 0.0 <= r[key] <= 1.0, key
        assert _finite(r["restoration"])
    rows = [s for s in back["summary"] if s["init"] != "-"]
    assert all(s["restoration"]["lo"] <= s["restoration"]["mean"] <= s["restoration"]["hi"] for s in rows)
    assert {"clean", "corrupted", "ctd", "npo", "restore"} <= {s["method"] for s in back["summary"]}
    # restore distils the clean checkpoint: the true answers' probability rises above the corrupted model's
    (base,) = back["baselines"]
    (restored,) = [r for r in back["runs"] if r["method"] == "restore"]
    assert restored["p_correct"] > base["corrupted"]["p_correct"] + 0.05, (restored, base["corrupted"])
    assert path.with_suffix(".png").stat().st_size > 1000


def test_restor_interval_is_students_t():
    from bench.restor import mean_ci

    cell = mean_ci([0.2, 0.4, 0.6])
    assert abs(cell["mean"] - 0.4) < 1e-12 and abs(cell["hi"] - (0.4 + 4.303 * 0.2 / 3**0.5)) < 1e-9
    assert mean_ci([0.5])["lo"] == 0.5 and mean_ci([])["lo"] is None


def test_never_seen_quick(tmp_path):
    from bench import never_seen
    from bench.common import emit

    result = never_seen.run(quick=True, n_fresh=12, n_groups=20, sizes=[1, 3, 50])
    back = json.loads(emit("never_seen", result, tmp_path).read_text())
    assert [r["group_size"] for r in back["results"]] == [1, 3]  # a size above the fresh people is skipped
    for row in back["results"]:
        assert row["groups"] == 20 and 0.0 <= row["pass_rate"] <= 1.0
        # A group fails the verdict only through a named condition, and every named one is a forgetting condition.
        assert set(row["fail_rate"]) <= {
            f"{s}_{c}" for s in ("loss", "zlib", "min_k") for c in ("test", "auc", "tail")
        } | {
            "ma",
            "el",
            "extraction",
        }
        assert row["pass_rate"] == 1.0 or row["fail_rate"]
        # As one request of a coalesced job: the same U tests and tails, MA / EL by a test instead of a comparison
        # of means, and never the fixed AUC band, which is what rejects most small never-seen groups.
        assert row["per_request_pass_rate"] >= row["pass_rate"]
        assert not any(name.endswith("_auc") for name in row["per_request_fail_rate"])
        # The stream's bar for earlier requests, as never-seen groups meet it: quantiles of MA − holdout MA.
        q = row["ma_minus_holdout"]
        assert q["p5"] <= q["p50"] <= q["p90"] <= q["p95"] and 0.0 <= row["share_ma_above_holdout_plus_0.03"] <= 1.0
        if q["p5"] > 0.03:
            assert row["share_ma_above_holdout_plus_0.03"] >= 0.9
