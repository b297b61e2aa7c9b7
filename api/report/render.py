"""The evidence report: one self-contained HTML page per audit record, for a data-protection officer to file.

Everything is inline (styles, SVG figures drawn on the server): the page loads nothing, runs no script, reads
the same printed or opened years later from a ticket attachment, and carries the signed certificate with the
command that verifies it offline. Values are escaped by Jinja2's autoescape; the page is served with a
Content-Security-Policy that allows no script at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from unlearnd.api.report import evidence, plots

TEMPLATE_DIR = Path(__file__).resolve().parent
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

_env = Environment(
    loader=FileSystemLoader(TEMPLATE_DIR),
    autoescape=select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(fmt=evidence.fmt, fmt_p=evidence.fmt_p, share=evidence.fmt_share)


@dataclass(frozen=True)
class ReportInput:
    """What the report shows beyond the audit record itself (looked up by the route)."""

    audit: dict[str, Any]  # the audit record as GET /v1/audits/{id} shows it (JSON types)
    certificate: dict[str, Any]  # its signed certificate, as GET /v1/audits/{id}/certificate serves it
    model_name: str | None
    adapter_version: int | None
    history: list[dict[str, Any]]  # the unlearning curve: the audit's own, or the job's metrics events
    generated_at: datetime


def verify_commands(audit_id: str, records_hint: bool = True) -> list[str]:
    """The exact commands that verify the certificate offline (the key is fetched once, from a channel you
    trust; `--records` checks your own copy of the records against the certified hashes)."""
    cert = f"certificate-{audit_id}.json"
    cmds = [
        f"unlearnd certificate get {audit_id} --out {cert} --public-key-out audit-public.json",
        f"unlearnd certificate verify {cert} --public-key audit-public.json",
    ]
    if records_hint:
        cmds.append(f"unlearnd certificate verify {cert} --public-key audit-public.json --records your-records.jsonl")
    return cmds


def figures(metrics: dict[str, Any], history: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The report's figures as inline SVG, each with a caption; those without data are left out (and the
    template says why)."""
    out = []
    scores = metrics.get("scores") or {}
    fig = plots.score_distributions(scores, "loss")
    if fig is not None:
        out.append(
            {
                "id": "fig-scores",
                "title": "Per-record loss: forget set against never-seen records",
                "caption": "Empirical distribution (ECDF) of each record's mean token loss. Before unlearning "
                "the forget set sits far to the left (the model predicts it too well); forgotten, its curve "
                "runs along the never-seen records' curve.",
                "svg": plots.svg(fig),
            }
        )
    fig = plots.unlearning_curve(history, metrics)
    if fig is not None:
        out.append(
            {
                "id": "fig-curve",
                "title": "Unlearning curve",
                "caption": "Left: forget-set MA at every check against the never-seen MA (before and after) "
                "and the retain MA before and after. Right: the membership AUCs against the band the verdict "
                "allows around 0.5.",
                "svg": plots.svg(fig),
            }
        )
    fig = plots.probe_accuracy(metrics)
    if fig is not None:
        out.append(
            {
                "id": "fig-probes",
                "title": "Restoration on probe questions",
                "caption": "Accuracy on the request's probe questions before and after unlearning.",
                "svg": plots.svg(fig),
            }
        )
    return out


def render(data: ReportInput) -> str:
    audit = data.audit
    metrics = audit.get("metrics") or {}
    signature = data.certificate.get("signature") or {}
    return _env.get_template("report.html.j2").render(
        audit=audit,
        metrics=metrics,
        model_name=data.model_name,
        adapter_version=data.adapter_version,
        generated_at=data.generated_at.isoformat(timespec="seconds"),
        reading=evidence.reading(audit),
        outcome=evidence.OUTCOME_WORDS.get(audit["verdict"], audit["verdict"]),
        ok=audit["verdict"] in ("forgotten", "not_memorised"),
        scores=evidence.score_rows(metrics),
        conditions=evidence.conditions(metrics),
        failed=evidence.failed_conditions(metrics),
        note=evidence.judged(metrics).get("note"),
        measures=evidence.measure_rows(metrics),
        kept=evidence.kept(metrics),
        glossary=evidence.GLOSSARY,
        figures=figures(metrics, data.history),
        has_scores=bool(metrics.get("scores")),
        has_history=bool(data.history),
        signature=signature,
        commands=verify_commands(audit["id"]),
        certificate_json=json.dumps(data.certificate, indent=2, ensure_ascii=False),
    )
