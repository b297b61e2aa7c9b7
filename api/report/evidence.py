"""An audit's metrics as evidence a person reads: the statistical rows per membership score, the before /
after table, what the model kept, and a one-paragraph reading in plain words. Pure functions over the
audit's JSON (worker/publish.py `audit_metrics`), shared by the HTML report and the CLI (`audits show`, the
demo), so the two never tell a different story."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SCORES = (("loss", "loss"), ("zlib", "zlib"), ("min_k", "Min-k%"))
MEASURES = (
    ("ma", "MA (memorisation accuracy)"),
    ("el10", "EL10 (extraction likelihood)"),
    ("extraction", "exact extraction, any prefix"),
    ("extraction_short", "exact extraction, short prefix"),
    ("perplexity", "perplexity"),
)
# What each measure means, for a reader who has not read the papers (the demo and the report print these).
GLOSSARY = {
    "MA": "memorisation accuracy: the share of a record's tokens the model predicts exactly, given the text "
    "before them. Never-seen records of the same kind score well above 0 (the template is predictable), so "
    "'forgotten' means at most the never-seen level, not 0.",
    "EL10": "extraction likelihood: how many 10-token runs of a record the model reproduces when asked to "
    "continue its beginning.",
    "extraction": "exact extraction: the model completes the record word for word from its first tokens.",
    "MIA AUC": "membership-inference AUC: how well an attacker's score (loss, zlib, Min-k%) tells the forget "
    "records from records the model never saw. 0.5 is chance: indistinguishable; 1.0 means every forget "
    "record looks more familiar than every never-seen one.",
}


def num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def fmt(value: Any, digits: int = 3) -> str:
    v = num(value)
    return "–" if v is None else f"{v:.{digits}f}"


def fmt_p(value: Any) -> str:
    v = num(value)
    if v is None:
        return "–"
    return f"{v:.2g}" if v < 0.001 else f"{v:.3f}"


@dataclass(frozen=True)
class ScoreRow:
    key: str
    label: str
    n_forget: int | None
    n_holdout: int | None
    auc_before: float | None
    auc: float | None
    auc_low: float | None
    auc_high: float | None
    p_value: float | None
    min_record_p: float | None
    failed: list[str]  # this score's failed conditions (test, auc, tail)


def judged(metrics: dict[str, Any]) -> dict[str, Any]:
    """The forgetting half of the verdict the outcome rests on: after unlearning, or before when nothing
    ran (not_memorised)."""
    verdict = metrics.get("verdict") or {}
    return verdict.get("after") or verdict.get("before") or {}


def score_rows(metrics: dict[str, Any]) -> list[ScoreRow]:
    evidence = judged(metrics)
    before = ((metrics.get("verdict") or {}).get("before") or {}).get("scores") or {}
    failed = set(evidence.get("failed") or [])
    rows = []
    for key, label in SCORES:
        t = (evidence.get("scores") or {}).get(key) or {}
        rows.append(
            ScoreRow(
                key,
                label,
                t.get("n_forget"),
                t.get("n_holdout"),
                num((before.get(key) or {}).get("auc")),
                num(t.get("auc")),
                num(t.get("auc_low")),
                num(t.get("auc_high")),
                num(t.get("p_value")),
                num(t.get("min_record_p")),
                sorted(f for f in failed if f.startswith(f"{key}_")),
            )
        )
    return rows


def conditions(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Every condition of the verdict, forgetting then utility, each {name, ok, value, bound, half}."""
    verdict = metrics.get("verdict") or {}
    rows = [{**c, "half": "forgetting"} for c in judged(metrics).get("conditions") or []]
    rows += [{**c, "half": "utility"} for c in (verdict.get("utility") or {}).get("conditions") or []]
    return rows


def failed_conditions(metrics: dict[str, Any]) -> list[str]:
    verdict = metrics.get("verdict") or {}
    return list(judged(metrics).get("failed") or []) + list((verdict.get("utility") or {}).get("failed") or [])


def measure_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Before/after of every set and measure, plus the membership AUCs: {set, measure, before, after}."""
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    rows = []
    for name in ("forget", "retain", "holdout"):
        for key, label in MEASURES:
            b, a = (before.get(name) or {}).get(key), (after.get(name) or {}).get(key)
            if num(b) is not None or num(a) is not None:
                rows.append({"set": name, "measure": label, "before": num(b), "after": num(a)})
    for key, label in SCORES:
        b, a = (before.get("mia") or {}).get(f"{key}_auc"), (after.get("mia") or {}).get(f"{key}_auc")
        if num(b) is not None or num(a) is not None:
            rows.append({"set": "forget vs holdout", "measure": f"MIA AUC, {label}", "before": num(b), "after": num(a)})
    return rows


@dataclass(frozen=True)
class Kept:
    """What the model kept of the retain set against the original model (None where not measured)."""

    retain_ma_before: float | None
    retain_ma_after: float | None
    extraction_before: float | None
    extraction_after: float | None
    ma_drop_bound: float | None
    extraction_kept_bound: float | None

    @property
    def ma_drop(self) -> float | None:
        if self.retain_ma_before is None or self.retain_ma_after is None:
            return None
        return self.retain_ma_before - self.retain_ma_after

    @property
    def extraction_kept(self) -> float | None:
        if self.extraction_before is None or self.extraction_after is None or self.extraction_before <= 0:
            return None
        return self.extraction_after / self.extraction_before

    @property
    def lost(self) -> bool:
        """The retain set got measurably worse (any drop), whether or not within the verdict's bounds."""
        drop, kept = self.ma_drop, self.extraction_kept
        return (drop is not None and drop > 0.005) or (kept is not None and kept < 0.99)


def kept(metrics: dict[str, Any]) -> Kept:
    original = (metrics.get("original") or {}).get("retain") or (metrics.get("before") or {}).get("retain") or {}
    after = (metrics.get("after") or {}).get("retain") or {}
    bounds = (metrics.get("verdict") or {}).get("bounds") or {}
    return Kept(
        num(original.get("ma")),
        num(after.get("ma")),
        num(original.get("extraction_short")),
        num(after.get("extraction_short")),
        num(bounds.get("max_retain_ma_drop")),
        num(bounds.get("min_retain_extraction_kept")),
    )


OUTCOME_WORDS = {
    "forgotten": "The records are forgotten",
    "not_memorised": "The model never knew these records",
    "not_reached": "Forgetting was not reached",
    "model_damaged": "Forgetting broke the model",
    "unverified": "Unverified",
    "failed": "The job failed",
    "cancelled": "The request was cancelled",
}


def reading(audit: dict[str, Any]) -> str:
    """One paragraph that reads the audit's numbers for a person: what the model knew before, what a
    membership attacker sees after, what it cost the retained data, and so what the verdict means."""
    metrics = audit.get("metrics") or {}
    verdict = str(audit.get("verdict"))
    rows = {r.key: r for r in score_rows(metrics)}
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    f0, f1 = before.get("forget") or {}, after.get("forget") or {}
    h0 = before.get("holdout") or after.get("holdout") or {}
    parts = [f"{OUTCOME_WORDS.get(verdict, verdict)}."]
    loss = rows.get("loss")
    if verdict in ("failed", "cancelled") or not before:
        if audit.get("error"):
            parts.append(str(audit["error"]))
        return " ".join(parts)
    if loss is not None and loss.auc_before is not None:
        knew = (
            "recognised the forget records"
            if loss.auc_before >= 0.6
            else "could barely tell the forget records from never-seen ones"
        )
        parts.append(
            f"Before unlearning the model {knew}: a membership attacker using the per-record loss separated them "
            f"from never-seen records with AUC {fmt(loss.auc_before, 2)} (0.5 is chance), their memorisation "
            f"accuracy (MA) was {fmt(f0.get('ma'))} against {fmt(h0.get('ma'))} for never-seen records, and "
            f"{fmt_share(f0.get('extraction'))} of them could be extracted word for word."
        )
    if after:
        steps = metrics.get("steps")
        aucs = ", ".join(
            f"{r.label} {fmt(r.auc, 2)} [{fmt(r.auc_low, 2)}, {fmt(r.auc_high, 2)}]"
            for r in rows.values()
            if r.auc is not None
        )
        parts.append(
            f"After {steps} unlearning steps the attacker's AUCs are {aucs} (95 % intervals); MA is "
            f"{fmt(f1.get('ma'))} against the never-seen level {fmt((after.get('holdout') or {}).get('ma'))}, "
            f"and {fmt_share(f1.get('extraction'))} of the records can still be extracted."
        )
    k = kept(metrics)
    if k.ma_drop is not None:
        cost = (
            f"The retained data paid for it: retain MA went from {fmt(k.retain_ma_before)} to "
            f"{fmt(k.retain_ma_after)} and short-prefix extraction of retained records from "
            f"{fmt(k.extraction_before, 2)} to {fmt(k.extraction_after, 2)}"
            if k.lost
            else f"The retained data kept its level: retain MA {fmt(k.retain_ma_before)} → {fmt(k.retain_ma_after)}"
        )
        bound = f" (allowed: a drop of at most {fmt(k.ma_drop_bound, 2)})" if k.ma_drop_bound is not None else ""
        parts.append(cost + bound + ".")
    failed = failed_conditions(metrics)
    if verdict == "forgotten":
        parts.append(
            "Every condition holds, so by the tests an auditor would run the forget records now look like data "
            "the model never saw; this is statistical evidence against a holdout set, not a proof."
        )
    elif verdict == "not_memorised":
        parts.append("Nothing had to be unlearned, so no new adapter version was published.")
    elif failed:
        parts.append(f"Conditions that failed: {', '.join(failed)}; nothing was published for this request.")
    note = judged(metrics).get("note")
    if note:
        parts.append(f"Note: {note}")
    return " ".join(parts)


def fmt_share(value: Any) -> str:
    v = num(value)
    return "–" if v is None else f"{round(v * 100):d} %"
