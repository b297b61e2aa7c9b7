"""The verdict: are the forget records as unfamiliar to the model as data it never saw, and was the model kept?

"Forgotten" is a statistical claim about per-record membership scores, forget set vs. holdout (same
distribution, never trained on), in the spirit of TOFU's forget quality (Maini et al. 2024) and MUSE's PrivLeak
(Shi et al. 2024), made two-sided so that over-forgetting (records made abnormally unlikely — the Streisand
effect) fails too. Every condition must hold:

- for each score — loss, zlib-normalised loss, Min-k% (core/metrics.py) — the two-sided Mann–Whitney U test
  does not tell the sets apart at level α, the AUC lies within 0.5 ± tolerance, and no single forget record
  is more familiar than the holdout's tail: its one-sided p under the holdout's Student-t prediction
  distribution is ≥ `tail_p` / (number of forget records) — the 5 % tail, family-wise over the records;
- forget MA ≤ holdout MA and forget EL_n ≤ holdout EL_n (the TDEC rule: necessary, not sufficient);
- exact extraction 0 from every attack prefix (the first few tokens, and the configured prefix).

A job serving several requests (coalesced) meets all of that on its whole forget set, and each request's own
records must also be indistinguishable at their size: no U test, tail, one-sided MA / EL test at α tells them
apart from the holdout, and nothing is extracted (`forgetting`'s `per_request`).

"Kept" compares the model with the *original* one on what it must keep: retain MA drop, short-prefix retain
extraction kept, and holdout perplexity (text it never saw: general ability) within the configured bounds.

Pure functions of scores and metric blocks; the loop (core/unlearn.py) and the report (core/pipeline.py)
call the same ones, so the stopping rule checks exactly what the audit records.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from unlearnd.core.config import Bounds
from unlearnd.core.stats import TwoSample, compare, mann_whitney_p, min_two_sided_p

if TYPE_CHECKING:
    from unlearnd.core.metrics import SetScores

SCORES = ("loss", "zlib", "min_k")
SMALL_SET = 3  # forget sets this small get a note on what the test can show

# Outcomes, as the audit records them.
FORGOTTEN = "forgotten"  # indistinguishable from never seen, model kept
NOT_MEMORISED = "not_memorised"  # already indistinguishable before any step: nothing to unlearn
NOT_REACHED = "not_reached"  # still distinguishable (or extractable) when the step budget ran out
MODEL_DAMAGED = "model_damaged"  # indistinguishable, but only by breaking what the model must keep
UNVERIFIED = "unverified"  # the model has no holdout set: nothing to test indistinguishability against
PUBLISHED = (FORGOTTEN, UNVERIFIED)  # outcomes whose adapter becomes the model's active version


@dataclass(frozen=True)
class Condition:
    name: str
    ok: bool
    value: float | None
    bound: str

    def to_dict(self) -> dict:
        v = self.value
        return {
            "name": self.name,
            "ok": self.ok,
            "value": None if v is None or v != v else round(v, 6),
            "bound": self.bound,
        }


@dataclass
class Forgetting:
    """The forgetting half of the verdict, with its evidence."""

    indistinguishable: bool
    scores: dict[str, TwoSample]
    conditions: list[Condition]
    generated: bool  # EL and extraction were measured (the loop skips the decode until the scores pass)
    note: str | None = None
    alternative: str = "two-sided"  # of the U test: "greater" is the before-check's (is it memorised at all?)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.conditions if not c.ok]

    def to_dict(self) -> dict:
        return {
            "indistinguishable": self.indistinguishable,
            "test": f"{self.alternative} Mann-Whitney U, forget vs holdout, per score; AUC with DeLong 95% interval",
            "scores": {k: v.to_dict() for k, v in self.scores.items()},
            "conditions": [c.to_dict() for c in self.conditions],
            "failed": self.failed,
            "note": self.note,
        }


def forgetting(
    forget: SetScores, holdout: SetScores, bounds: Bounds, *, one_sided: bool = False, per_request: bool = False
) -> Forgetting:
    """Every forgetting condition (module docstring). EL and extraction count only when measured: without a
    decode (`forget.metrics.extraction` NaN) the verdict is "not yet", never a pass.

    `one_sided`: the question before any step — is there evidence the model *knows* the records? Only the
    familiar direction counts (the U test's alternative "forget more familiar", AUC ≤ 0.5 + tolerance): a
    record less familiar than strangers is not memorised, and unlearning can only make it less so.

    `per_request`: one request's records inside a job that serves several (`judge`), after the whole set met
    every condition above. Each request must be one that no test at α tells apart from never-seen data at its
    own size: the two-sided U tests (whose acceptance region *is* the AUC band calibrated to that size), the
    per-record tails, MA and EL by the one-sided test, extraction 0. The fixed 0.5 ± 0.1 band and the MA / EL
    mean comparisons are the whole set's: at 2 records they reject 9 of 10 genuinely never-seen pairs
    (bench/never_seen), so every request of a coalesced job would have to sit at the holdout's median."""
    f_scores, h_scores = forget.familiarity(), holdout.familiarity()
    alternative = "greater" if one_sided else "two-sided"
    tests = {name: compare(f_scores[name], h_scores[name], alternative=alternative) for name in SCORES}
    conds: list[Condition] = []
    tol = bounds.auc_tolerance
    for name, t in tests.items():
        conds.append(Condition(f"{name}_test", t.p_value >= bounds.alpha, t.p_value, f"p >= {bounds.alpha}"))
        if one_sided:
            conds.append(Condition(f"{name}_auc", t.auc <= 0.5 + tol, t.auc, f"<= {0.5 + tol}"))
        elif not per_request:
            conds.append(Condition(f"{name}_auc", abs(t.auc - 0.5) <= tol, t.auc, f"within 0.5 ± {tol}"))
        # Family-wise over the forget records (Bonferroni): a genuine never-seen set of 30 has a record in the
        # holdout's 5 % tail 79 % of the time, so a per-record 5 % bound would fail never-seen data itself.
        level = bounds.tail_p / max(1, t.n_forget)
        conds.append(Condition(f"{name}_tail", t.min_record_p >= level, t.min_record_p, f">= {level:.4g}"))
    fm, hm = forget.metrics, holdout.metrics
    generated = not math.isnan(fm.extraction) and not math.isnan(hm.el10)
    if one_sided or per_request:
        # Is the model more accurate on these records than on strangers'? Per record, by the same one-sided
        # test: a mean MA above the holdout's by chance is no evidence at a handful of never-seen records.
        p_ma = mann_whitney_p(forget.ma, holdout.ma, "greater")
        conds.append(Condition("ma", p_ma >= bounds.alpha, fm.ma, f"not above holdout {hm.ma:.4f} (p={p_ma:.3g})"))
        el_ok = generated and (
            forget.el is None or holdout.el is None or mann_whitney_p(forget.el, holdout.el, "greater") >= bounds.alpha
        )
        conds.append(Condition("el", el_ok, fm.el10, f"not above holdout {hm.el10:.4f}"))
    else:
        conds.append(Condition("ma", fm.ma <= hm.ma, fm.ma, f"<= holdout {hm.ma:.4f}"))
        conds.append(Condition("el", generated and fm.el10 <= hm.el10, fm.el10, f"<= holdout {hm.el10:.4f}"))
    conds.append(Condition("extraction", generated and fm.extraction == 0.0, fm.extraction, "== 0"))
    note = small_set_note(len(forget.loss), len(holdout.loss), bounds)
    return Forgetting(all(c.ok for c in conds), tests, conds, generated, note, alternative)


@dataclass
class Judgement:
    """The forgetting verdict of a job's whole forget set and of each request it serves: a job serving several
    requests (coalesced) must make *each* request's records indistinguishable, not only their union."""

    whole: Forgetting
    requests: list[Forgetting]

    @property
    def indistinguishable(self) -> bool:
        return self.whole.indistinguishable and all(r.indistinguishable for r in self.requests)

    @property
    def failed(self) -> list[str]:
        names = list(self.whole.failed)
        for r in self.requests:
            names += [n for n in r.failed if n not in names]
        return names

    @property
    def generated(self) -> bool:
        return self.whole.generated


def judge(
    forget: SetScores,
    holdout: SetScores,
    bounds: Bounds,
    groups: list[list[int]] | None = None,
    *,
    one_sided: bool = False,
) -> Judgement:
    """`forgetting` of the whole set and of each group of its records (None or one group: the whole set), each
    group by the per-request conditions (`forgetting`'s `per_request`)."""
    whole = forgetting(forget, holdout, bounds, one_sided=one_sided)
    if not groups or len(groups) == 1:
        return Judgement(whole, [whole])
    per = [forgetting(forget.subset(g), holdout, bounds, one_sided=one_sided, per_request=True) for g in groups]
    return Judgement(whole, per)


def scores_pass(f: Forgetting | Judgement) -> bool:
    """Everything but EL and extraction holds: worth the greedy decode that settles the rest."""
    if isinstance(f, Judgement):
        return scores_pass(f.whole) and all(scores_pass(r) for r in f.requests)
    return all(c.ok for c in f.conditions if c.name not in ("el", "extraction"))


def small_set_note(m: int, n: int, bounds: Bounds) -> str | None:
    """What the test can and cannot show at this size (m forget records, n holdout records)."""
    if m == 0 or n == 0:
        return "no holdout: indistinguishability cannot be tested"
    min_p = min_two_sided_p(m, n)
    if m > SMALL_SET and min_p < bounds.alpha / 100:
        return None
    can = "can" if min_p < bounds.alpha else "cannot"
    return (
        f"{m} forget record(s) vs {n} holdout: the U test's smallest two-sided p is {min_p:.3g}, so it {can} "
        f"reject at α={bounds.alpha} only when every forget record is more familiar than every holdout record; "
        f"the AUC is the records' mean holdout percentile. The per-record tail check (each record's prediction p "
        f">= {bounds.tail_p / m:.3g}) carries the evidence at this size; the set-level test has little power."
    )


@dataclass
class Utility:
    kept: bool
    conditions: list[Condition] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.conditions if not c.ok]

    def to_dict(self) -> dict:
        return {"kept": self.kept, "conditions": [c.to_dict() for c in self.conditions], "failed": self.failed}


def utility(original: dict, after: dict, bounds: Bounds) -> Utility:
    """Was the model kept? `original` and `after` are report blocks (core/pipeline.measure) of the original
    model and of the new version: retain MA drop, short-prefix retain extraction kept (after ÷ original; an
    original that extracts nothing keeps trivially), holdout perplexity ratio."""
    conds: list[Condition] = []
    r0, r1 = original.get("retain") or {}, after.get("retain") or {}
    if r0.get("n"):
        drop = r0["ma"] - r1["ma"]
        conds.append(
            Condition("retain_ma_drop", drop <= bounds.max_retain_ma_drop, drop, f"<= {bounds.max_retain_ma_drop}")
        )
        e0, e1 = r0["extraction_short"], r1["extraction_short"]
        kept = e1 / e0 if e0 > 0 else 1.0
        conds.append(
            Condition(
                "retain_extraction_kept",
                kept >= bounds.min_retain_extraction_kept,
                kept,
                f">= {bounds.min_retain_extraction_kept}",
            )
        )
    h0, h1 = original.get("holdout") or {}, after.get("holdout") or {}
    if h0.get("n"):
        ratio = h1["perplexity"] / h0["perplexity"]
        conds.append(
            Condition(
                "perplexity_ratio", ratio <= bounds.max_perplexity_ratio, ratio, f"<= {bounds.max_perplexity_ratio}"
            )
        )
    return Utility(all(c.ok for c in conds), conds)


def outcome(before: Forgetting | None, after: Forgetting | None, kept: Utility | None) -> str:
    """One word for the audit. `before` indistinguishable: the model never knew the records (no version is
    made). Otherwise forgotten only if the new version is indistinguishable *and* kept the model."""
    if before is not None and before.indistinguishable:
        return NOT_MEMORISED
    if after is None or not after.indistinguishable:
        return NOT_REACHED
    if kept is not None and not kept.kept:
        return MODEL_DAMAGED
    return FORGOTTEN


def bounds_dict(b: Bounds) -> dict:
    return asdict(b)
