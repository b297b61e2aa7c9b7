"""Service and client commands: `serve`, `worker`, `keys`, `models`, `forget`, `adapters`, `audits`.

Client commands talk HTTP to `UNLEARND_URL` with `UNLEARND_API_KEY` through the SDK (`unlearnd.Client`).
Heavy modules (the server, torch) are imported inside command bodies, so `unlearnd --help` and the client
commands start fast. An API error exits with status 2 and its code and message; an unreachable server
exits with 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from unlearnd.cli.help import App

keys_app = App(help="API keys (direct database access, on the server host).")
models_app = App(help="Register and list base models.")
forget_app = App(help="Submit and follow forget requests.")
adapters_app = App(help="List and download adapter versions.")
audits_app = App(help="Query and verify the audit log; evidence reports.")

UrlOpt = Annotated[str | None, typer.Option("--url", envvar="UNLEARND_URL", help="Server URL.")]
KeyOpt = Annotated[str | None, typer.Option("--key", envvar="UNLEARND_API_KEY", help="API key.", show_default=False)]


def _client(url: str | None, key: str | None):
    from unlearnd import Client

    return Client(url, key)


def _call(fn, *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)`; an API error exits 2 with its code, an unreachable server 1."""
    from unlearnd import ApiError

    try:
        return fn(*args, **kwargs)
    except ApiError as e:
        typer.echo(f"error: {e.code}: {e.message}", err=True)
        raise typer.Exit(1 if e.status == 0 else 2) from None


def _dump(item: Any) -> Any:
    return item.model_dump(mode="json")


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _read_records(path: Path) -> list[dict]:
    from unlearnd.core.errors import InvalidInput
    from unlearnd.core.records import read_records

    try:
        return [r.to_dict() for r in read_records(path)]
    except InvalidInput as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


# --- server side -------------------------------------------------------------------------------------------


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default UNLEARND_HOST or 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default UNLEARND_PORT or 8000).")] = None,
) -> None:
    """Run the API with its embedded thread dispatcher (or the one UNLEARND_DISPATCHER names)."""
    from unlearnd.cli.output import quiet_libraries

    quiet_libraries()
    from unlearnd.api.server import serve_forever
    from unlearnd.api.settings import Settings

    settings = Settings()
    serve_forever(settings, host or settings.host, port if port is not None else settings.port)


def worker(
    ctx: typer.Context,
    queues: Annotated[str | None, typer.Option("-Q", "--queues", help="Default: UNLEARND_CELERY_QUEUE.")] = None,
    gpu: Annotated[
        str | None,
        typer.Option(
            help="Pin this worker to one GPU (sets CUDA_VISIBLE_DEVICES; one worker per GPU), or to several "
            "(`--gpu 0,1`: one model placed across them, for models larger than one GPU; sets UNLEARND_WORKER_GPUS)."
        ),
    ] = None,
    pool: Annotated[str, typer.Option(help="Celery pool: solo (default: one job per process) or prefork.")] = "solo",
    concurrency: Annotated[int, typer.Option("-c", "--concurrency", help="Processes (prefork only).")] = 1,
    loglevel: Annotated[str, typer.Option("-l", "--loglevel")] = "INFO",
    hostname: Annotated[str | None, typer.Option("-n", "--hostname", help="Node name (default gpuN@host).")] = None,
) -> None:
    """Run a Celery worker for UNLEARND_DISPATCHER=celery: one job at a time on one device, plus the sweeper.

    Start one per GPU (`--gpu 0`, `--gpu 1`, ...) or one on a CPU host. Extra arguments go to `celery worker`.
    """
    import os

    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        owned = len(gpu.split(","))
        if owned > 1:  # the visible GPUs are renumbered 0..n-1 inside the process
            os.environ["UNLEARND_WORKER_GPUS"] = ",".join(str(i) for i in range(owned))
    from unlearnd.worker.celery_app import worker_app

    app = worker_app()
    argv = ["worker", "-Q", queues or app.conf.task_default_queue, "-P", pool, "-c", str(concurrency), "-l", loglevel]
    argv += ["-n", hostname or (f"gpu{gpu.replace(',', '-')}@%h" if gpu is not None else "worker@%h")]
    argv += ["--without-gossip", "--without-mingle"]  # nothing to gossip: the database coordinates workers
    app.worker_main([*argv, *ctx.args])


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    tenant: Annotated[str, typer.Option(help="Tenant of the key.")] = "default",
    scopes: Annotated[
        list[str] | None,
        typer.Option(
            "--scopes",
            help="Comma-separated or repeated: models:admin, requests:write, requests:read, adapters:read, "
            "audit:read, or all (the default).",
        ),
    ] = None,
) -> None:
    """Create an API key in the configured database and print it (it is shown only once)."""
    from unlearnd.api.db import transaction
    from unlearnd.api.security import create_api_key, parse_scopes

    try:
        chosen = parse_scopes(scopes)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    settings, engine, sessions, where = server_database()
    try:
        with transaction(sessions) as session:
            row, key = create_api_key(session, settings, tenant=tenant, name=name, scopes=chosen)
            prefix = row.prefix
    finally:
        engine.dispose()
    typer.echo(key)
    typer.echo(
        f"(prefix {prefix}, tenant {tenant}, scopes {','.join(chosen)}, in the database {where}; store the key now)",
        err=True,
    )


def server_database() -> tuple[Any, Any, Any, str]:
    """(settings, engine, session factory, the database's URL without its password) of the server's database,
    as `UNLEARND_*` name it. Exits 2 unless it exists and the server created it: run elsewhere (another
    directory, without the server's `UNLEARND_DATA_DIR`), these commands would otherwise make a new empty
    database, and a key created there is one the server rejects."""
    from unlearnd.api.db import DatabaseMissing, make_engine, make_session_factory, require_initialised, upgrade_to_head
    from unlearnd.api.settings import Settings

    settings = Settings()
    url = settings.resolved_database_url
    try:
        where = require_initialised(url)
    except DatabaseMissing as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    upgrade_to_head(settings)  # a database the server created, perhaps by an older version
    engine = make_engine(url)
    return settings, engine, make_session_factory(engine), where


# --- client commands ---------------------------------------------------------------------------------------


@models_app.command("add")
def models_add(
    name: Annotated[str, typer.Argument(help="A name unique in your tenant.")],
    source: Annotated[
        str,
        typer.Argument(help="Local HF model directory inside one of the server's model roots (relative, or absolute)."),
    ],
    retain: Annotated[Path | None, typer.Option(help="JSONL of records to keep (utility reference).")] = None,
    holdout: Annotated[Path | None, typer.Option(help="JSONL of never-trained records (stopping rule).")] = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Register a base model; prints its id."""
    model = _call(
        _client(url, key).register_model,
        name,
        source,
        retain=_read_records(retain) if retain else [],
        holdout=_read_records(holdout) if holdout else [],
    )
    typer.echo(model.id)


@models_app.command("list")
def models_list(url: UrlOpt = None, key: KeyOpt = None) -> None:
    """Registered models (JSON), each with its active adapter version."""
    client = _client(url, key)
    _print_json(_call(lambda: [_dump(m) for m in client.models()]))


@forget_app.command("submit")
def forget_submit(
    file: Annotated[Path, typer.Argument(help="JSONL of records to forget ({'text'} or {'prompt','completion'}).")],
    model: Annotated[str, typer.Option("--model", help="Model id.")],
    subject: Annotated[str, typer.Option("--subject", help="The data subject's id in your system.")],
    legal_basis: Annotated[str, typer.Option("--legal-basis", help="Why the data is erased.")] = "GDPR Art. 17",
    ticket: Annotated[str | None, typer.Option(help="Your ticket reference.")] = None,
    probes: Annotated[Path | None, typer.Option(help="JSONL of {'question','answer'} probes.")] = None,
    method: Annotated[str | None, typer.Option(help="ctd | ihl | ga | gd | kl | npo | restore")] = None,
    init: Annotated[str | None, typer.Option(help="fila | lora")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Unlearning step budget.")] = None,
    restore_from: Annotated[
        str | None,
        typer.Option("--restore-from", help="Model id of the checkpoint from before corrupting documents."),
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="A retry with the same key returns the first request.")
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow progress until the request ends.")] = False,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Submit a forget request; prints its id (and follows it with --watch)."""
    from unlearnd import read_jsonl

    client = _client(url, key)
    req = _call(
        client.forget,
        model,
        _read_records(file),
        subject=subject,
        legal_basis=legal_basis,
        ticket=ticket,
        probes=read_jsonl(probes) if probes else None,
        method=method,
        init=init,
        config={"max_steps": max_steps} if max_steps else None,
        idempotency_key=idempotency_key,
        restore_from=restore_from,
    )
    typer.echo(req.id)
    if watch:
        _finish(_watch(client, req.id))


def _watch(client: Any, request_id: str) -> Any:
    from unlearnd.cli.output import console
    from unlearnd.cli.progress import follow

    return _call(follow, client, request_id, console())


def _finish(req: Any) -> None:
    typer.echo(f"{req.id}: {req.status}" + (f" ({req.verdict})" if req.verdict else ""))
    if req.error:
        typer.echo(f"error: {req.error}", err=True)
    if req.status != "succeeded":
        raise typer.Exit(1)


@forget_app.command("status")
def forget_status(
    request_id: Annotated[str, typer.Argument(help="Forget request id.")],
    watch: Annotated[bool, typer.Option("--watch", help="Show a live progress bar until it ends.")] = False,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Show a request's status (JSON), or follow it live with --watch."""
    client = _client(url, key)
    if watch:
        _finish(_watch(client, request_id))
    else:
        _print_json(_dump(_call(client.request, request_id)))


@forget_app.command("cancel")
def forget_cancel(
    request_id: Annotated[str, typer.Argument(help="Forget request id.")], url: UrlOpt = None, key: KeyOpt = None
) -> None:
    """Cancel a request: at once while queued, at the job's next step while running."""
    req = _call(_client(url, key).cancel, request_id)
    typer.echo(f"{req.id}: {req.status}")


@adapters_app.command("list")
def adapters_list(
    model_id: Annotated[str, typer.Argument(help="Model id.")], url: UrlOpt = None, key: KeyOpt = None
) -> None:
    """A model's adapter versions (JSON), newest first."""
    client = _client(url, key)
    _print_json(_call(lambda: [_dump(a) for a in client.adapters(model_id)]))


@adapters_app.command("download")
def adapters_download(
    adapter_id: Annotated[str, typer.Argument(help="Adapter id (see `adapters list`).")],
    out: Annotated[Path, typer.Option("--out", help="Directory to unpack the PEFT adapter into.")],
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Download an adapter, verify its sha256, unpack it (load it with peft on the base model)."""
    meta = _call(_client(url, key).download_adapter, adapter_id, out)
    typer.echo(f"adapter v{meta.version} verified (sha256 {meta.sha256}) → {out}")


@audits_app.command("list")
def audits_list(
    subject: Annotated[str | None, typer.Option(help="Subject id as submitted.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model id.")] = None,
    verdict: Annotated[
        str | None,
        typer.Option(help="e.g. forgotten | not_memorised | not_reached | model_damaged | failed | cancelled"),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many records.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Audit records, newest first (a table whose ids are never cut; --json for everything)."""
    from itertools import islice

    from unlearnd.cli.audit_view import audit_table
    from unlearnd.cli.output import console

    client = _client(url, key)
    rows = _call(
        lambda: [
            _dump(a)
            for a in islice(
                client.audits(subject=subject, model_id=model, verdict=verdict, page_size=min(limit, 200)), limit
            )
        ]
    )
    if as_json:
        _print_json(rows)
        return
    out = console()
    out.print(audit_table(rows, out.width))


@audits_app.command("show")
def audits_show(
    audit_id: Annotated[str, typer.Argument(help="Audit record id (aud_…).")], url: UrlOpt = None, key: KeyOpt = None
) -> None:
    """One audit record as evidence: the membership tests, what the model kept, the failed conditions."""
    from unlearnd.cli.audit_view import print_audit
    from unlearnd.cli.output import console

    print_audit(_dump(_call(_client(url, key).audit, audit_id)), console())


@audits_app.command("report")
def audits_report(
    audit_id: Annotated[str, typer.Argument(help="Audit record id (aud_…).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the HTML report.")],
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Save the evidence report of an audit record: one self-contained, printable HTML file."""
    html = _call(_client(url, key).report, audit_id)
    out.write_text(html, encoding="utf-8")
    typer.echo(str(out))


@audits_app.command("head")
def audits_head(
    out: Annotated[Path | None, typer.Option("--out", help="Write the signed head to this file.")] = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """The audit chain's signed head (newest seq and hash). Keep heads outside the service and check them
    with `audits verify --head FILE`: a chain that lost records behind a saved head fails."""
    head = _call(_client(url, key).audit_head)
    if out is None:
        _print_json(head)
        return
    out.write_text(json.dumps(head, indent=2) + "\n")
    typer.echo(f"saved head seq {head['seq']} → {out}")


@audits_app.command("verify")
def audits_verify(
    head: Annotated[
        Path | None, typer.Option("--head", help="A head saved by `audits head --out`: the chain must contain it.")
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="Check the saved head's signature offline too (PEM, or the JSON of GET /v1/keys/audit-public).",
            envvar="UNLEARND_AUDIT_PUBLIC_KEY",
        ),
    ] = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Recompute the audit hash chain on the server and check it ends at its signed head (and, with --head,
    that it still contains a head you saved); exit 1 if it is broken."""
    saved = _saved_head(head, public_key) if head is not None else None
    result = _call(
        _client(url, key).verify_chain,
        head_seq=saved["seq"] if saved else None,
        head_hash=saved["hash"] if saved else None,
    )
    _print_json(_dump(result))
    if not result.ok:
        raise typer.Exit(1)


def _saved_head(path: Path, public_key: Path | None) -> dict:
    """A saved head, its signature checked when a public key is given (exit 1 if it does not verify)."""
    from unlearnd.api import certificates, chain_head

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        typer.echo(f"error: cannot read the head {path}: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        if public_key is not None:
            chain_head.verify(doc, certificates.load_public_key(public_key.read_bytes()))
        elif not isinstance(doc, dict) or type(doc.get("seq")) is not int or not isinstance(doc.get("hash"), str):
            raise certificates.CertificateError("not a saved chain head")
    except (certificates.CertificateError, ValueError, OSError) as e:
        typer.echo(f"INVALID head {path}: {e}", err=True)
        raise typer.Exit(1) from None
    return doc


def register(app: typer.Typer) -> None:
    from unlearnd.cli.demo import demo

    app.command("serve")(serve)
    app.command("demo")(demo)
    app.command("worker", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(worker)
    app.add_typer(keys_app, name="keys")
    app.add_typer(models_app, name="models")
    app.add_typer(forget_app, name="forget")
    app.add_typer(adapters_app, name="adapters")
    app.add_typer(audits_app, name="audits")
    from unlearnd.cli import security_cmds  # keys revoke/list, certificate get/verify

    security_cmds.register(app)
