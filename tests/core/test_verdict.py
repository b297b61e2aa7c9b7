"""The statistical verdict (core/stats.py, core/verdict.py) on synthetic scores: no model needed."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from unlearnd.core.config import Bounds
from unlearnd.core.metrics import SetMetrics, SetScores
from unlearnd.core.stats import (
    auc,
    compare,
    conformal_p,
    delong_interval,
    mann_whitney_p,
    min_two_sided_p,
    prediction_p,
)
from unlearnd.core.verdict import (
    FORGOTTEN,
    MODEL_DAMAGED,
    NOT_MEMORISED,
    NOT_REACHED,
    forgetting,
    judge,
    outcome,
    small_set_note,
    utility,
)


def _scores(loss, *, ma=0.5, el=0.0, extraction=0.0, generated=True) -> SetScores:
    """A set whose three membership scores all follow `loss` (zlib and Min-k% as monotone transforms)."""
    loss = [float(x) for x in loss]
    nan = float("nan")
    metrics = SetMetrics(
        n=len(loss),
        ma=ma,
        el10=el if generated else nan,
        extraction=extraction if generated else nan,
        extraction_short=extraction if generated else nan,
        extraction_half=extraction if generated else nan,
        perplexity=math.exp(sum(loss) / len(loss)),
    )
    n = len(loss)
    el_list = [el] * n if generated else None
    extracted = [extraction > 0] * n if generated else None
    return SetScores(metrics, loss, [-2 * x for x in loss], [x / 3 for x in loss], [ma] * n, el_list, extracted)


def test_auc_is_the_mann_whitney_u_over_mn_with_ties_half():
    pos, neg = [3.0, 2.0, 2.0, 5.0], [1.0, 2.0, 4.0]
    u = scipy_stats.mannwhitneyu(pos, neg, alternative="two-sided").statistic
    assert auc(pos, neg) == pytest.approx(u / 12)
    assert auc([1.0], [1.0]) == 0.5 and math.isnan(auc([], [1.0]))


def test_two_samples_of_one_distribution_pass_and_a_shift_either_way_fails():
    rng = np.random.default_rng(0)
    holdout = rng.normal(2.5, 0.3, 50)
    same = rng.normal(2.5, 0.3, 30)
    ok = forgetting(_scores(same), _scores(holdout, ma=0.6, el=0.1), Bounds())
    assert ok.indistinguishable, ok.failed
    assert all(ok.scores[s].p_value >= 0.05 and abs(ok.scores[s].auc - 0.5) <= 0.1 for s in ("loss", "zlib", "min_k"))

    familiar = forgetting(_scores(same - 0.3), _scores(holdout, ma=0.6, el=0.1), Bounds())  # lower loss: members
    assert not familiar.indistinguishable
    assert {"loss_test", "loss_auc", "zlib_test", "min_k_test"} <= set(familiar.failed)
    assert familiar.scores["loss"].auc > 0.6

    streisand = forgetting(_scores(same + 0.3), _scores(holdout, ma=0.6, el=0.1), Bounds())  # made too unlikely
    assert not streisand.indistinguishable
    assert {"loss_test", "loss_auc"} <= set(streisand.failed)
    assert streisand.scores["loss"].auc < 0.4


def test_one_record_more_familiar_than_the_holdouts_tail_fails_even_when_the_sets_match():
    rng = np.random.default_rng(1)
    holdout = rng.normal(2.5, 0.3, 50)
    forget = np.append(rng.normal(2.5, 0.3, 19), holdout.min() - 0.5)  # one record still memorised
    v = forgetting(_scores(forget), _scores(holdout, ma=0.6, el=0.1), Bounds())
    assert "loss_tail" in v.failed and not v.indistinguishable
    assert v.scores["loss"].min_record_p_empirical == pytest.approx(1 / 51)  # beyond every holdout record
    assert v.scores["loss"].min_record_p < 0.05 / 20  # and far enough out for the family-wise bound


def test_the_tail_check_holds_never_seen_sets_at_its_family_wise_level():
    """A literal per-record 5 % bound fails most genuine never-seen sets of 30; the family-wise bound fails
    about 5 % of them (one score, simulated)."""
    rng = np.random.default_rng(7)
    fails = 0
    for _ in range(300):
        t = compare(list(rng.normal(0, 1, 30)), list(rng.normal(0, 1, 50)))
        fails += t.min_record_p < 0.05 / 30
    assert fails / 300 <= 0.10


def test_each_request_of_a_coalesced_job_is_judged_by_tests_calibrated_to_its_size():
    """Never-seen pairs mostly fail the whole-set conditions (the fixed AUC band rejects most at m = 2) but pass
    the per-request ones about as often as the tests' levels allow; a pair still memorised fails them; a job's
    whole forget set keeps the whole-set conditions however its requests fare."""
    rng = np.random.default_rng(3)
    holdout = _scores(rng.normal(2.5, 0.3, 50), ma=0.6, el=0.1)
    pairs = [_scores(rng.normal(2.5, 0.3, 2), ma=0.6, el=0.1) for _ in range(400)]
    whole_rate = np.mean([forgetting(p, holdout, Bounds()).indistinguishable for p in pairs])
    request_rate = np.mean([forgetting(p, holdout, Bounds(), per_request=True).indistinguishable for p in pairs])
    assert whole_rate <= 0.5 and request_rate >= 0.85, (whole_rate, request_rate)

    lowest = min(holdout.loss)
    memorised = forgetting(_scores([lowest - 0.5, lowest - 0.6]), holdout, Bounds(), per_request=True)
    assert not memorised.indistinguishable and {"loss_test", "loss_tail"} <= set(memorised.failed)

    # Ten pairs, each a plausible never-seen pair, that together sit on the familiar side of the holdout.
    shifted = _scores(np.sort(rng.normal(2.35, 0.3, 20)))
    j = judge(shifted, holdout, Bounds(), [[2 * i, 2 * i + 1] for i in range(10)])
    assert not j.indistinguishable and "loss_auc" in j.whole.failed
    assert all(not c.name.endswith("_auc") for r in j.requests for c in r.conditions)
    assert any(c.name == "loss_auc" for c in j.whole.conditions)


def test_tdec_and_extraction_count_only_when_measured():
    rng = np.random.default_rng(2)
    holdout, forget = rng.normal(2.5, 0.3, 40), rng.normal(2.5, 0.3, 10)
    h = _scores(holdout, ma=0.6, el=0.1)
    assert forgetting(_scores(forget, ma=0.5, el=0.05), h, Bounds()).indistinguishable
    assert forgetting(_scores(forget, ma=0.7), h, Bounds()).failed == ["ma"]
    assert forgetting(_scores(forget, el=0.2), h, Bounds()).failed == ["el"]
    assert forgetting(_scores(forget, extraction=0.1), h, Bounds()).failed == ["extraction"]
    not_decoded = forgetting(_scores(forget, generated=False), h, Bounds())
    assert set(not_decoded.failed) == {"el", "extraction"} and not not_decoded.generated


def test_delong_interval_covers_the_true_auc_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    shift = 0.5  # true AUC = Φ(shift / √2)
    truth = scipy_stats.norm.cdf(shift / math.sqrt(2))
    covered = 0
    for _ in range(400):
        lo, hi = delong_interval(list(rng.normal(shift, 1, 30)), list(rng.normal(0, 1, 50)))
        covered += lo <= truth <= hi
    assert 0.90 <= covered / 400 <= 0.99


def test_mann_whitney_p_is_uniform_under_the_null():
    rng = np.random.default_rng(4)
    ps = [mann_whitney_p(list(rng.normal(0, 1, 10)), list(rng.normal(0, 1, 25))) for _ in range(400)]
    assert 0.02 <= np.mean(np.array(ps) < 0.05) <= 0.09  # the test's size is its level
    assert mann_whitney_p([1.0, 1.0], [1.0, 1.0, 1.0]) == 1.0


def test_min_two_sided_p_is_the_exact_extreme_of_the_u_distribution():
    for m, n in ((1, 5), (2, 4), (3, 3)):
        # every arrangement of m positives among m+n ranks is equally likely under H0
        extreme = sum(1 for c in itertools.combinations(range(m + n), m) if c == tuple(range(n, m + n)))
        total = math.comb(m + n, m)
        assert min_two_sided_p(m, n) == pytest.approx(2 * extreme / total)
        assert mann_whitney_p([10.0 + i for i in range(m)], [float(i) for i in range(n)]) == pytest.approx(
            min_two_sided_p(m, n)
        )


def test_conformal_p_ranks_a_record_among_the_reference():
    ref = [0.1, 0.2, 0.3, 0.4]
    assert conformal_p(0.5, ref) == pytest.approx(1 / 5)  # more familiar than all
    assert conformal_p(0.0, ref) == pytest.approx(1.0)
    assert compare([0.5, 0.0], ref).min_record_p_empirical == pytest.approx(1 / 5)
    assert prediction_p(0.25, ref) == pytest.approx(0.5)  # the reference's mean
    assert prediction_p(10.0, ref) < 1 / 5  # far beyond every record: smaller than any conformal p


def test_small_sets_get_a_note_saying_what_the_test_can_show():
    note = small_set_note(1, 25, Bounds())
    assert "1 forget record(s) vs 25 holdout" in note and "0.0769" in note and "cannot" in note
    assert "can reject" in small_set_note(2, 50, Bounds())
    assert small_set_note(30, 50, Bounds()) is None
    rng = np.random.default_rng(5)
    one = forgetting(_scores([2.5]), _scores(rng.normal(2.5, 0.3, 25), ma=0.6, el=0.1), Bounds())
    assert one.note and one.scores["loss"].n_forget == 1


def _block(retain_ma, retain_ext, holdout_ppl):
    return {
        "retain": {"n": 100, "ma": retain_ma, "extraction_short": retain_ext},
        "holdout": {"n": 50, "perplexity": holdout_ppl},
    }


def test_a_collapsed_model_is_not_kept_and_not_certified():
    original = _block(0.93, 0.88, 12.0)
    kept = utility(original, _block(0.925, 0.85, 12.2), Bounds())
    assert kept.kept and kept.failed == []
    collapsed = utility(original, _block(0.38, 0.0, 40.0), Bounds())  # gd+fila on the demo world, as measured
    assert set(collapsed.failed) == {"retain_ma_drop", "retain_extraction_kept", "perplexity_ratio"}

    rng = np.random.default_rng(6)
    h = _scores(rng.normal(2.5, 0.3, 25), ma=0.6, el=0.1)
    before = forgetting(_scores(rng.normal(1.0, 0.3, 10), ma=0.9, el=0.9, extraction=0.9), h, Bounds())
    after = forgetting(_scores(rng.normal(2.5, 0.3, 10)), h, Bounds())
    assert after.indistinguishable
    assert outcome(before, after, collapsed) == MODEL_DAMAGED
    assert outcome(before, after, kept) == FORGOTTEN
    assert outcome(before, forgetting(_scores(rng.normal(1.0, 0.3, 10)), h, Bounds()), kept) == NOT_REACHED
    assert outcome(after, None, None) == NOT_MEMORISED  # indistinguishable before any step


def test_before_any_step_only_the_familiar_direction_counts():
    """Records less familiar than strangers are not memorised (one-sided), though a two-sided check after
    unlearning would flag such a set as over-forgotten."""
    rng = np.random.default_rng(8)
    holdout = _scores(rng.normal(2.5, 0.3, 40), ma=0.6, el=0.1)
    odd = _scores(rng.normal(2.9, 0.3, 10), ma=0.3)  # never seen, and harder than the holdout
    assert forgetting(odd, holdout, Bounds(), one_sided=True).indistinguishable
    assert not forgetting(odd, holdout, Bounds()).indistinguishable
    memorised = _scores(rng.normal(1.0, 0.3, 10), ma=0.9, el=0.9, extraction=0.8)
    before = forgetting(memorised, holdout, Bounds(), one_sided=True)
    assert {"loss_test", "loss_auc", "ma", "el", "extraction"} <= set(before.failed)
    assert "greater" in before.to_dict()["test"]
