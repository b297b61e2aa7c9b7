"""The report's figures, drawn with matplotlib's object API (no pyplot state: safe in a server thread):
per-record score distributions (ECDF) of the forget set against the holdout before and after, the
unlearning curve by step against the never-seen level, and probe accuracy. `svg()` inlines a figure in the
report (text kept as text, so it prints sharp and needs no font files); the demo saves the curve as PNG."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib import rc_context
from matplotlib.figure import Figure

FORGET, HOLDOUT, RETAIN = "#c0392b", "#2c6fbb", "#2e8b57"
_RC = {"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False}


def _figure(width: float, height: float, cols: int) -> tuple[Figure, Any]:
    with rc_context(_RC):  # the style binds when the axes are made; rcParams are left as they were
        fig = Figure(figsize=(width, height), layout="constrained")
        return fig, fig.subplots(1, cols, squeeze=False)[0]


def _ecdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    xs = sorted(values)
    n = len(xs)
    return [xs[0], *xs], [0.0, *((i + 1) / n for i in range(n))]


def score_distributions(scores: dict[str, Any], score: str = "loss") -> Figure | None:
    """ECDF of one per-record score (default: mean token loss) of the forget set and the holdout, before and
    after unlearning: forgotten records' curve lies on the holdout's."""
    panels = [(when, scores.get(when)) for when in ("before", "after") if scores.get(when)]
    if not panels:
        return None
    fig, axes = _figure(3.4 * len(panels), 2.6, len(panels))
    for ax, (when, block) in zip(axes, panels, strict=True):
        for name, color, label in (("holdout", HOLDOUT, "never seen (holdout)"), ("forget", FORGET, "forget set")):
            values = (block.get(name) or {}).get(score) or []
            if values:
                xs, ys = _ecdf(values)
                ax.step(xs, ys, where="post", color=color, lw=1.8, label=f"{label}, n={len(values)}")
        ax.set_title(f"{when} unlearning")
        ax.set_xlabel({"loss": "per-record loss (mean token NLL)", "zlib": "zlib-normalised loss"}.get(score, score))
        ax.set_ylabel("share of records ≤ x")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.25)
    axes[0].legend(loc="lower right", fontsize=7, frameon=False)
    return fig


def unlearning_curve(history: list[dict[str, Any]], metrics: dict[str, Any]) -> Figure | None:
    """Forget MA by step against the never-seen (holdout) MA and the retain MA before and after, and the
    three membership AUCs by step against the band the verdict allows around 0.5."""
    points = [h for h in history if isinstance(h.get("step"), int)]
    if not points:
        return None
    steps = [h["step"] for h in points]
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    fig, (ma, auc) = _figure(7.2, 2.8, 2)
    ma.plot(steps, [h.get("forget_ma") for h in points], color=FORGET, lw=1.8, marker=".", label="forget MA")
    last = steps[-1] if steps[-1] > steps[0] else steps[0] + 1
    for block, style, when in ((before, "--", "before"), (after, ":", "after")):
        level = (block.get("holdout") or {}).get("ma")
        if isinstance(level, int | float):
            ma.axhline(level, color=HOLDOUT, ls=style, lw=1.2, label=f"never-seen MA, {when}")
    retain = [(steps[0], (before.get("retain") or {}).get("ma")), (last, (after.get("retain") or {}).get("ma"))]
    retain = [(x, y) for x, y in retain if isinstance(y, int | float)]
    if retain:
        ma.plot(*zip(*retain, strict=True), color=RETAIN, marker="s", ls="-", lw=1, label="retain MA")
    ma.set_xlabel("step")
    ma.set_ylabel("memorisation accuracy")
    ma.set_ylim(0, 1.02)
    ma.legend(fontsize=7, frameon=False, loc="best")
    ma.grid(alpha=0.25)
    tolerance = ((metrics.get("verdict") or {}).get("bounds") or {}).get("auc_tolerance", 0.1)
    auc.axhspan(0.5 - tolerance, 0.5 + tolerance, color=HOLDOUT, alpha=0.12, label=f"allowed: 0.5 ± {tolerance:g}")
    for key, label, style in (("loss_auc", "loss", "-"), ("zlib_auc", "zlib", "--"), ("min_k_auc", "Min-k%", ":")):
        ys = [h.get(key) for h in points]
        if any(isinstance(y, int | float) for y in ys):
            auc.plot(steps, ys, color=FORGET, ls=style, lw=1.5, label=f"MIA AUC, {label}")
    auc.set_xlabel("step")
    auc.set_ylabel("forget vs never-seen AUC")
    auc.set_ylim(0, 1.02)
    auc.legend(fontsize=7, frameon=False, loc="best")
    auc.grid(alpha=0.25)
    return fig


def probe_accuracy(metrics: dict[str, Any]) -> Figure | None:
    """Accuracy on the request's probe questions before and after (restoration, RESTOR)."""
    values = [(when, ((metrics.get(when) or {}).get("probes") or {}).get("accuracy")) for when in ("before", "after")]
    values = [(w, v) for w, v in values if isinstance(v, int | float)]
    if not values:
        return None
    fig, (ax,) = _figure(3.2, 2.4, 1)
    bars = ax.bar([w for w, _ in values], [v for _, v in values], color=[HOLDOUT, FORGET][: len(values)])
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("probe accuracy")
    return fig


def svg(fig: Figure) -> str:
    """The figure as an inline <svg> element that scales with the page (its size moves to a viewBox)."""
    buf = io.StringIO()
    with rc_context(_RC):  # svg.fonttype is read when saving
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r'\s(width|height)="[\d.]+pt"', "", text[: text.index(">")], count=2) + text[text.index(">") :]
    return text


def save_png(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rc_context(_RC):
        fig.savefig(path, format="png", dpi=130)
    return path
