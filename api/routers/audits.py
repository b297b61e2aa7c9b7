"""Audit records: filtered, cursor-paginated queries; one record; the hash chain's verification and its
signed head."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from unlearnd.api import audit, certificates, chain_head, schemas, security, views
from unlearnd.api.deps import AUDIT_READ, AppSettings, AuditDep, Caller, DbSession, scope
from unlearnd.api.errors import NotFound, invalid_query
from unlearnd.api.models import VERDICTS, AdapterVersion, AuditRecord, BaseModel, ForgetRequest, JobEvent, utcnow
from unlearnd.api.pagination import MAX_POSITION, decode_cursor, encode_cursor
from unlearnd.api.schemas import ID_PATTERN

router = APIRouter(prefix="/v1/audits", tags=["audits"], dependencies=[scope(AUDIT_READ)])

# A free string, not an enum of today's verdicts: a verdict the engine adds later is filterable at once.
Verdict = Annotated[str | None, Query(pattern=r"^[a-z_]{1,32}$", description=f"e.g. {', '.join(VERDICTS)}.")]


@router.get("", response_model=schemas.Page[schemas.AuditOut])
def list_audits(
    session: DbSession,
    settings: AppSettings,
    caller: Caller,
    subject: Annotated[str | None, Query(max_length=500, description="The subject id as submitted.")] = None,
    model_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    verdict: Verdict = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> dict:
    """Newest first. `subject` is hashed the way requests' subjects are (HMAC with the server secret), so the
    id itself is never stored and never needed in the database."""
    query = select(AuditRecord).where(AuditRecord.tenant_id == caller.tenant_id).order_by(AuditRecord.seq.desc())
    if subject is not None:
        query = query.where(AuditRecord.subject_hash == security.subject_hash(settings, subject))
    if model_id is not None:
        query = query.where(AuditRecord.model_id == model_id)
    if since is not None:
        query = query.where(AuditRecord.completed_at >= _utc(since))
    if until is not None:
        query = query.where(AuditRecord.completed_at < _utc(until))
    if verdict is not None:
        query = query.where(AuditRecord.verdict == verdict)
    if position := decode_cursor(cursor, seq="int"):
        query = query.where(AuditRecord.seq < position["seq"])
    rows = session.scalars(query.limit(limit + 1)).all()
    page = rows[:limit]
    return {
        "data": [views.audit_out(r) for r in page],
        "has_more": len(rows) > limit,
        "next": encode_cursor(seq=page[-1].seq) if len(rows) > limit else None,
    }


def _utc(value: datetime) -> datetime:
    """`value` in UTC (naive means UTC). Near the calendar's ends the conversion can leave datetime's range
    (`0001-01-01T00:00+14:00` is in year 0): such an instant lies before, or after, every record, so it is the
    smallest or largest datetime, which filters exactly the same."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return (datetime.min if value.year == datetime.min.year else datetime.max).replace(tzinfo=UTC)


@router.get("/verify", response_model=schemas.ChainOut)
def verify(
    session: DbSession,
    caller: Caller,
    request: Request,
    head_seq: Annotated[
        int | None, Query(ge=0, le=MAX_POSITION, description="`seq` of a head you saved (GET /v1/audits/head).")
    ] = None,
    head_hash: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$", description="`hash` of that saved head.")] = None,
) -> dict:
    """Recompute the whole chain and check that it ends at its signed head; `first_broken_seq` names the first
    record that was altered or removed, `missing_from_seq`–`missing_to_seq` the records that are gone. Given a
    head you saved earlier (`head_seq` and `head_hash`), also check the chain still contains it: a truncated
    or rolled-back chain is reported with the missing range."""
    if (head_seq is None) != (head_hash is None):
        raise invalid_query(("head_seq", "head_hash"), "give both head_seq and head_hash, or neither")
    saved = (head_seq, head_hash) if head_seq is not None and head_hash is not None else None
    return audit.verify_chain(session, request.app.state.signing_key.public_key(), saved)


@router.get("/head", response_model=schemas.ChainHeadOut)
def head(session: DbSession, caller: Caller) -> dict:
    """The chain's newest `seq` and `hash`, signed with the audit key at its last append. Save these outside
    the service (like CloudTrail digest files): `GET /v1/audits/verify?head_seq=…&head_hash=…` later finds
    a chain that lost records behind them, and the signature is checked offline with the audit public key."""
    doc = chain_head.load(session)
    if doc is None:
        raise NotFound("the audit chain is empty: it has no head yet", details={"resource": "audit head"})
    return doc


@router.get("/{id}", response_model=schemas.AuditOut)
def get_audit(record: AuditDep) -> schemas.AuditOut:
    return views.audit_out(record)


@router.get(
    "/{id}/certificate",
    response_model=schemas.CertificateOut,
    responses={200: {"description": "An Ed25519-signed certificate; verify it with the audit public key."}},
)
def get_certificate(record: AuditDep, session: DbSession, request: Request) -> Response:
    """The audit record as a signed unlearning certificate (api/certificates.py). Verify it offline with
    `unlearnd certificate verify FILE --public-key audit-public.json` (key: `GET /v1/keys/audit-public`)."""
    doc = _certificate(record, session, request)
    filename = f"certificate-{record.id}.json"
    return Response(
        certificates.canonical(doc),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _adapter_version(session: Session, record: AuditRecord) -> int | None:
    if not record.adapter_version_id:
        return None
    return session.scalar(select(AdapterVersion.version).where(AdapterVersion.id == record.adapter_version_id))


def _certificate(record: AuditRecord, session: Session, request: Request) -> dict:
    salt = session.scalar(select(ForgetRequest.record_salt).where(ForgetRequest.id == record.request_id))
    return certificates.build(
        record,
        chained_fields=audit.CHAINED_FIELDS,
        record_salt=salt,
        adapter_version=_adapter_version(session, record),
        issued_at=utcnow(),
        key=request.app.state.signing_key,
    )


def _history(session: Session, record: AuditRecord) -> list[dict]:
    """The unlearning curve: the audit's own (`metrics.history`), or, for a record written before audits
    kept it, the job's unlearning metrics events (throttled, so fewer points)."""
    history = (record.metrics or {}).get("history")
    if history is not None:
        return history
    events = session.scalars(
        select(JobEvent.data).where(JobEvent.job_id == record.job_id, JobEvent.type == "metrics").order_by(JobEvent.id)
    ).all()
    return [e for e in events if e.get("phase") == "unlearning" and "forget_ma" in e]


@router.get(
    "/{id}/report",
    # no response_class: it would document the JSON errors (404, 401, ...) as text/html too
    responses={200: {"content": {"text/html": {}}, "description": "The evidence report (self-contained HTML)."}},
)
def get_report(record: AuditDep, session: DbSession, request: Request) -> HTMLResponse:
    """The evidence report of one audit record: a self-contained, printable HTML page (no external assets,
    no script) with the request, the verdict and its statistical evidence, before/after metrics, figures,
    the chain position and signature, and the command that verifies the certificate offline."""
    from unlearnd.api.report.render import CSP, ReportInput, render  # matplotlib loads on the first report only

    data = ReportInput(
        audit=views.audit_out(record).model_dump(mode="json"),
        certificate=_certificate(record, session, request),
        model_name=session.scalar(select(BaseModel.name).where(BaseModel.id == record.model_id)),
        adapter_version=_adapter_version(session, record),
        history=_history(session, record),
        generated_at=utcnow(),
    )
    html = render(data)
    headers = {
        "Content-Security-Policy": CSP,
        "Content-Disposition": f'inline; filename="evidence-{record.id}.html"',
        "X-Content-Type-Options": "nosniff",
    }
    return HTMLResponse(html, headers=headers)
