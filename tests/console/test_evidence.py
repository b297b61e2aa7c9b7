"""The reading of an audit's numbers (api/report/evidence.py), on synthetic metrics: what it says for each
outcome, that a retain loss is flagged, that the small-set note is carried."""

from __future__ import annotations

from unlearnd.api.report import evidence


def _metrics(auc_after: float, retain_after: float, failed: list[str], note: str | None = None) -> dict:
    scores = {
        k: {"n_forget": 3, "n_holdout": 24, "auc": auc_after, "auc_low": 0.3, "auc_high": 0.7, "p_value": 0.4}
        for k in ("loss", "zlib", "min_k")
    }
    return {
        "steps": 24,
        "before": {"forget": {"ma": 0.97, "extraction": 1.0}, "holdout": {"ma": 0.40}, "retain": {"ma": 0.96}},
        "after": {"forget": {"ma": 0.38, "extraction": 0.0}, "holdout": {"ma": 0.40}, "retain": {"ma": retain_after}},
        "original": {"retain": {"ma": 0.96, "extraction_short": 0.9}},
        "verdict": {
            "bounds": {"max_retain_ma_drop": 0.02, "min_retain_extraction_kept": 0.9},
            "before": {"scores": {k: {**v, "auc": 1.0} for k, v in scores.items()}},
            "after": {"scores": scores, "conditions": [], "failed": failed, "note": note},
            "utility": {"conditions": [], "failed": []},
        },
    }


def test_a_forgotten_request_reads_as_indistinguishable_with_the_retain_set_kept():
    text = evidence.reading({"verdict": "forgotten", "metrics": _metrics(0.52, 0.958, [])})
    assert text.startswith("The records are forgotten.")
    assert "AUC 1.00 (0.5 is chance)" in text and "loss 0.52 [0.30, 0.70]" in text
    assert "kept its level" in text and "not a proof" in text


def test_a_retain_loss_is_flagged_and_failed_conditions_named():
    text = evidence.reading({"verdict": "not_reached", "metrics": _metrics(0.8, 0.90, ["loss_auc", "ma"])})
    assert "The retained data paid for it: retain MA went from 0.960 to 0.900" in text
    assert "Conditions that failed: loss_auc, ma" in text
    assert evidence.kept(_metrics(0.8, 0.90, [])).lost


def test_the_small_set_note_is_carried():
    note = "with 3 forget records the U test cannot reject"
    assert note in evidence.reading({"verdict": "forgotten", "metrics": _metrics(0.5, 0.96, [], note)})


def test_a_failed_job_reads_as_its_error():
    audit = {"verdict": "failed", "metrics": {}, "error": "the model has no weight files"}
    assert evidence.reading(audit) == "The job failed. the model has no weight files"
