"""Audits on a terminal: the list as a table whose ids are never cut, and one audit as the evidence a
reader needs (each membership score's AUC with its interval and test, what the model kept, which verdict
conditions failed, and a paragraph reading the numbers: api/report/evidence.py, shared with the report)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from unlearnd.api.report import evidence
from unlearnd.api.report.evidence import fmt

ID_WIDTH = 36  # `aud_` / `req_` + 32 hex digits (api/models.new_id)


def audit_table(audits: list[dict[str, Any]], width: int) -> Table:
    """seq, id, verdict and completion first; the request id and the forget MA only when `width` has room
    for them: a column is dropped rather than an id cut (ids are what a reader copies)."""
    columns: list[tuple[str, int, Any]] = [
        ("seq", 5, lambda a: str(a["seq"])),
        ("id", ID_WIDTH, lambda a: a["id"]),
        ("verdict", 13, lambda a: a["verdict"]),
        ("completed", 16, lambda a: str(a["completed_at"])[:16].replace("T", " ")),
        ("request", ID_WIDTH, lambda a: a["request_id"]),
        ("forget MA before→after", 22, _ma),
    ]
    chosen, used = [], 0
    for name, size, get in columns:
        if used + size + 2 <= width or len(chosen) < 2:
            chosen.append((name, size, get))
            used += size + 2
    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0))
    for name, size, _ in chosen:
        table.add_column(name, no_wrap=True, min_width=min(size, 22), overflow="fold")
    for a in audits:
        table.add_row(*(get(a) for _, _, get in chosen))
    return table


def _ma(a: dict[str, Any]) -> str:
    m = a.get("metrics") or {}
    before = ((m.get("before") or {}).get("forget") or {}).get("ma")
    after = ((m.get("after") or {}).get("forget") or {}).get("ma")
    return f"{before:.3f} → {after:.3f}" if before is not None and after is not None else "-"


def print_audit(audit: dict[str, Any], console: Console, *, explain: bool = False) -> None:
    """The audit's evidence tables; `explain` adds what MA, EL10 and the MIA AUC mean (the demo)."""
    metrics = audit.get("metrics") or {}
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    table = Table(title=f"audit {audit['id']} — verdict: {audit['verdict']}")
    for col in ("forget set vs holdout (never seen)", "before", "after", "never-seen level"):
        table.add_column(col)
    for row in evidence.score_rows(metrics):
        interval = f" [{fmt(row.auc_low)}, {fmt(row.auc_high)}] p={evidence.fmt_p(row.p_value)}" if row.auc else ""
        table.add_row(f"MIA AUC, {row.label}", fmt(row.auc_before), fmt(row.auc) + interval, "0.5")
    f0, f1 = before.get("forget") or {}, after.get("forget") or {}
    h1 = after.get("holdout") or before.get("holdout") or {}
    for m, label in (
        ("ma", "MA"),
        ("el10", "EL10"),
        ("extraction", "extraction (any prefix)"),
        ("perplexity", "perplexity"),
    ):
        table.add_row(f"forget {label}", fmt(f0.get(m)), fmt(f1.get(m)), f"holdout {fmt(h1.get(m))}")
    console.print(table)
    k = evidence.kept(metrics)
    if after:
        kept = Table(title="what the model must keep (against the original model)")
        for col in ("measure", "original", "after", "allowed"):
            kept.add_column(col)
        lost = "[red]" if k.ma_drop is not None and k.ma_drop > (k.ma_drop_bound or 0) else ""
        kept.add_row(
            "retain MA", fmt(k.retain_ma_before), f"{lost}{fmt(k.retain_ma_after)}", f"drop ≤ {fmt(k.ma_drop_bound, 2)}"
        )
        kept.add_row(
            "retain extraction, short prefix",
            fmt(k.extraction_before),
            fmt(k.extraction_after),
            f"≥ {evidence.fmt_share(k.extraction_kept_bound)} kept",
        )
        o_h = (metrics.get("original") or {}).get("holdout") or {}
        kept.add_row(
            "holdout perplexity", fmt(o_h.get("perplexity")), fmt((after.get("holdout") or {}).get("perplexity")), ""
        )
        console.print(kept)
        if k.lost:
            console.print(
                f"[yellow]retain loss:[/yellow] retain MA {fmt(k.retain_ma_before)} → {fmt(k.retain_ma_after)}, "
                f"short-prefix extraction {fmt(k.extraction_before, 2)} → {fmt(k.extraction_after, 2)}"
            )
    failed = evidence.failed_conditions(metrics)
    console.print(f"failed conditions: {', '.join(failed) if failed else 'none'}; steps {metrics.get('steps')}")
    note = evidence.judged(metrics).get("note")
    if note:
        console.print(f"note: {note}")
    console.print(f"adapter sha256 {audit.get('adapter_sha256')} · chain seq {audit['seq']}, hash {audit['hash']}")
    if explain:
        console.print()
        for term, meaning in evidence.GLOSSARY.items():
            console.print(f"[bold]{term}[/bold]: {meaning}")
    console.print()
    console.print(evidence.reading(audit))
