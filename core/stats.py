"""Two-sample statistics of membership scores: AUC with a DeLong confidence interval, the two-sided
Mann–Whitney U test, and per-record conformal p-values against a reference sample.

Pure functions on lists of floats, oriented so that a *higher* score means "more familiar" (looks like
training data). The verdict (core/verdict.py) combines them; nothing here knows about models.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _scipy_stats


def auc(positive: list[float], negative: list[float]) -> float:
    """P(score of a positive > score of a negative), ties count half (Mann–Whitney U / (n_pos·n_neg))."""
    if not positive or not negative:
        return float("nan")
    return float(_placements(np.asarray(positive, float), np.asarray(negative, float)).mean())


def _placements(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """ψ(x_i, y_j) = 1 if x_i > y_j, ½ if equal, 0 else (m × n)."""
    return (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])


def delong_interval(positive: list[float], negative: list[float], level: float = 0.95) -> tuple[float, float]:
    """Normal-approximation confidence interval of the AUC with DeLong's variance (DeLong, DeLong &
    Clarke-Pearson 1988): `var = S10/m + S01/n`, S10 the variance over positives of their mean placement,
    S01 the same over negatives. With one positive S10 is unknown and taken as 0: the interval then shows only
    the reference sample's uncertainty, which is why small sets get a verdict note (core/verdict.py)."""
    pos, neg = np.asarray(positive, float), np.asarray(negative, float)
    if pos.size == 0 or neg.size == 0:
        return float("nan"), float("nan")
    psi = _placements(pos, neg)
    a = psi.mean()
    s10 = psi.mean(1).var(ddof=1) if pos.size > 1 else 0.0
    s01 = psi.mean(0).var(ddof=1) if neg.size > 1 else 0.0
    se = math.sqrt(s10 / pos.size + s01 / neg.size)
    z = float(_scipy_stats.norm.ppf(0.5 + level / 2))
    return max(0.0, a - z * se), min(1.0, a + z * se)


def mann_whitney_p(positive: list[float], negative: list[float], alternative: str = "two-sided") -> float:
    """p-value of the Mann–Whitney U test (H0: the two samples come from one distribution); `greater`: the
    alternative that the positives score higher. scipy picks the exact distribution for small samples
    without ties, the tie-corrected normal approximation otherwise."""
    if not positive or not negative:
        return float("nan")
    if np.ptp(np.concatenate([positive, negative])) == 0:
        return 1.0  # every score equal: nothing tells the samples apart
    return float(_scipy_stats.mannwhitneyu(positive, negative, alternative=alternative, method="auto").pvalue)


def min_two_sided_p(m: int, n: int) -> float:
    """The smallest two-sided p the U test can give for sizes m and n: `2 / C(m+n, m)` (all positives beyond
    all negatives). Above α the test cannot reject whatever the data, which a small-set verdict says."""
    return min(1.0, 2.0 / math.comb(m + n, m))


def conformal_p(score: float, reference: list[float]) -> float:
    """How unusual a score is among reference scores, on the familiar side: `(1 + #{r ≥ score}) / (n + 1)`,
    a valid p-value when the record and the reference are exchangeable (never seen alike)."""
    ref = np.asarray(reference, float)
    return float((1 + (ref >= score).sum()) / (ref.size + 1))


def prediction_p(score: float, reference: list[float]) -> float:
    """How unusual a score is on the familiar side, under the Student-t prediction distribution of one new
    draw from the reference's population: `1 − T_{n−1}((x − mean) / (sd·√(1 + 1/n)))`. Unlike the conformal p
    it can go below 1/(n+1), so a record far beyond every reference record is seen as such at any n."""
    ref = np.asarray(reference, float)
    n = ref.size
    sd = ref.std(ddof=1) if n > 1 else 0.0
    if n < 3 or sd == 0:
        return conformal_p(score, reference)
    t = (score - ref.mean()) / (sd * math.sqrt(1 + 1 / n))
    return float(_scipy_stats.t.sf(t, df=n - 1))


@dataclass(frozen=True)
class TwoSample:
    """One score, forget vs. holdout: what the audit carries for it."""

    n_forget: int
    n_holdout: int
    auc: float
    auc_low: float
    auc_high: float
    p_value: float
    min_record_p: float  # the most familiar forget record's prediction p (Student-t) against the holdout
    min_record_p_empirical: float  # the same record's conformal p among the holdout records

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def compare(
    forget: list[float], holdout: list[float], level: float = 0.95, alternative: str = "two-sided"
) -> TwoSample:
    low, high = delong_interval(forget, holdout, level)
    return TwoSample(
        n_forget=len(forget),
        n_holdout=len(holdout),
        auc=auc(forget, holdout),
        auc_low=low,
        auc_high=high,
        p_value=mann_whitney_p(forget, holdout, alternative),
        min_record_p=min((prediction_p(s, holdout) for s in forget), default=float("nan")),
        min_record_p_empirical=min((conformal_p(s, holdout) for s in forget), default=float("nan")),
    )
