"""Security commands: `keys revoke`, `keys list` (on the server host, direct database access) and
`certificate get` / `certificate verify` (verification is offline: the file and the public key suffice)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from unlearnd.cli.help import App
from unlearnd.cli.service_cmds import KeyOpt, UrlOpt, _call, _client, keys_app, server_database

certificate_app = App(help="Signed unlearning certificates: fetch and verify.")


def _sessions():
    _, engine, sessions, _ = server_database()
    return engine, sessions


@keys_app.command("revoke")
def keys_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's visible prefix (uk_…), see `keys list`.")],
) -> None:
    """Revoke an API key: from its next request on it answers 401."""
    from unlearnd.api.db import transaction
    from unlearnd.api.security import revoke_api_key

    engine, sessions = _sessions()
    try:
        with transaction(sessions) as session:
            row = revoke_api_key(session, prefix)
            found = row is not None
    finally:
        engine.dispose()
    if not found:
        typer.echo(f"error: no key with prefix {prefix!r}", err=True)
        raise typer.Exit(2)
    typer.echo(f"revoked {prefix}")


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None) -> None:
    """Keys by prefix (never the secret): tenant, scopes, created, revoked."""
    from sqlalchemy import select

    from unlearnd.api.db import transaction
    from unlearnd.api.models import ApiKey, Tenant

    engine, sessions = _sessions()
    try:
        with transaction(sessions) as session:
            query = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id).order_by(ApiKey.created_at)
            if tenant:
                query = query.where(Tenant.name == tenant)
            rows = [
                {
                    "prefix": k.prefix,
                    "tenant": t,
                    "name": k.name,
                    "scopes": k.scopes,
                    "created_at": k.created_at.isoformat(),
                    "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
                }
                for k, t in session.execute(query).all()
            ]
    finally:
        engine.dispose()
    typer.echo(json.dumps(rows, indent=2))


@certificate_app.command("get")
def certificate_get(
    audit_id: Annotated[str, typer.Argument(help="Audit record id (aud_…).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the certificate JSON.")],
    public_key_out: Annotated[
        Path | None, typer.Option("--public-key-out", help="Also save the service's public key here.")
    ] = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Download the signed certificate of an audit record (byte for byte as served)."""
    client = _client(url, key)
    out.write_bytes(_call(client.certificate, audit_id))
    if public_key_out is not None:
        public_key_out.write_text(json.dumps(_call(client.audit_public_key), indent=2))
    typer.echo(str(out))


@certificate_app.command("verify")
def certificate_verify(
    file: Annotated[Path, typer.Argument(help="A certificate JSON (GET /v1/audits/{id}/certificate).")],
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="The service's public key: PEM, or the JSON of GET /v1/keys/audit-public. Required unless "
            "UNLEARND_AUDIT_PUBLIC_KEY names the file.",
            envvar="UNLEARND_AUDIT_PUBLIC_KEY",
        ),
    ] = None,
    records: Annotated[
        Path | None,
        typer.Option("--records", help="JSONL of the records you asked to erase: check they are the ones certified."),
    ] = None,
) -> None:
    """Verify a certificate offline: the Ed25519 signature, the audit chain hash it carries, and optionally
    that your records hash to its record hashes. Exit 0 if valid, 1 if not."""
    from unlearnd.api import certificates

    if public_key is None:
        typer.echo("error: --public-key is required (save GET /v1/keys/audit-public once)", err=True)
        raise typer.Exit(2)
    data = file.read_bytes()
    try:
        key = certificates.load_public_key(public_key.read_bytes())
        doc = certificates.verify_bytes(data, key)
        if records is not None:
            _check_records(doc, records)
    except (certificates.CertificateError, ValueError, KeyError) as e:
        typer.echo(f"INVALID: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"valid: audit {doc['audit_id']} (chain seq {doc['seq']}), request {doc['request_id']}, "
        f"verdict {doc['verdict']}, {len(doc['record_hashes'])} record hash(es), "
        f"signed by key {doc['signature']['key_id']}"
    )


def _check_records(doc: dict, path: Path) -> None:
    from unlearnd.api import certificates
    from unlearnd.api.security import record_hash
    from unlearnd.core.records import read_records

    salt = doc.get("record_salt")
    if not salt:
        raise certificates.CertificateError("the certificate carries no record salt")
    mine = sorted(record_hash(salt, r) for r in read_records(path))
    if mine != sorted(doc["record_hashes"]):
        raise certificates.CertificateError("your records do not hash to the certificate's record hashes")


def register(app: typer.Typer) -> None:
    app.add_typer(certificate_app, name="certificate")
