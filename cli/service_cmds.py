"""Service and client commands: `serve`, `keys`, `models`, `forget`, `adapters`, `audits`, and `demo`.

Client commands talk HTTP to `UNLEARND_URL` with `UNLEARND_API_KEY`. Heavy modules (the server, torch) are
imported inside command bodies, so `unlearnd --help` and the client commands start fast. An API error
exits with status 2 and its code and message; an unreachable server exits with 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

keys_app = typer.Typer(no_args_is_help=True, help="API keys (direct database access, on the server host).")
models_app = typer.Typer(no_args_is_help=True, help="Register and list base models.")
forget_app = typer.Typer(no_args_is_help=True, help="Submit and follow forget requests.")
adapters_app = typer.Typer(no_args_is_help=True, help="List and download adapter versions.")
audits_app = typer.Typer(no_args_is_help=True, help="Query and verify the audit log.")

UrlOpt = Annotated[str | None, typer.Option("--url", envvar="UNLEARND_URL", help="Server URL.")]
KeyOpt = Annotated[str | None, typer.Option("--key", envvar="UNLEARND_API_KEY", help="API key.", show_default=False)]


def _client(url: str | None, key: str | None):
    from cli.client import Client

    return Client(url, key)


def _call(fn, *args: Any, **kwargs: Any) -> Any:
    from cli.client import ApiFailure

    try:
        return fn(*args, **kwargs)
    except ApiFailure as e:
        typer.echo(f"error: {e.code}: {e.message}", err=True)
        raise typer.Exit(1 if e.status == 0 else 2) from None


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _read_records(path: Path) -> list[dict]:
    from core.errors import InvalidInput
    from core.records import read_records

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
    from api.server import serve_forever
    from api.settings import Settings

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
    from worker.celery_app import worker_app

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
    from api.db import transaction
    from api.security import create_api_key, parse_scopes

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
    from api.db import DatabaseMissing, make_engine, make_session_factory, require_initialised, upgrade_to_head
    from api.settings import Settings

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
    body = {
        "name": name,
        "source": source,
        "retain": _read_records(retain) if retain else [],
        "holdout": _read_records(holdout) if holdout else [],
    }
    model = _call(_client(url, key).post, "/v1/models", body)
    typer.echo(model["id"])


@models_app.command("list")
def models_list(url: UrlOpt = None, key: KeyOpt = None) -> None:
    _print_json(_call(_client(url, key).get, "/v1/models")["data"])


@forget_app.command("submit")
def forget_submit(
    file: Annotated[Path, typer.Argument(help="JSONL of records to forget ({'text'} or {'prompt','completion'}).")],
    model: Annotated[str, typer.Option("--model", help="Model id.")],
    subject: Annotated[str, typer.Option("--subject", help="The data subject's id in your system.")],
    legal_basis: Annotated[str, typer.Option("--legal-basis")] = "GDPR Art. 17",
    ticket: Annotated[str | None, typer.Option(help="Your ticket reference.")] = None,
    probes: Annotated[Path | None, typer.Option(help="JSONL of {'question','answer'} probes.")] = None,
    method: Annotated[str | None, typer.Option(help="ihl | ga | gd | kl | npo")] = None,
    init: Annotated[str | None, typer.Option(help="fila | lora")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps")] = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow progress until the request ends.")] = False,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Submit a forget request; prints its id (and follows it with --watch)."""
    from core.records import read_jsonl

    body: dict[str, Any] = {
        "model_id": model,
        "subject": {"id": subject, "legal_basis": legal_basis, "ticket": ticket},
        "records": _read_records(file),
    }
    if probes:
        body["probes"] = read_jsonl(probes)
    if method:
        body["method"] = method
    if init:
        body["init"] = init
    if max_steps:
        body["config"] = {"max_steps": max_steps}
    client = _client(url, key)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    req = _call(client.post, "/v1/forget-requests", body, headers)
    typer.echo(req["id"])
    if watch:
        _finish(_watch(client, req["id"]))


def _watch(client: Any, request_id: str) -> dict:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task("queued", total=None, info="")

        def update(req: dict, job: dict) -> None:
            p = job["progress"]
            metrics = p.get("metrics") or {}
            info = "  ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))
            bar.update(
                task,
                description=p["phase"] or req["status"],
                completed=p["step"],
                total=p["total"] or None,
                info=info,
            )

        return _call(client.wait, request_id, update)


def _finish(req: dict) -> None:
    typer.echo(f"{req['id']}: {req['status']}" + (f" ({req['verdict']})" if req.get("verdict") else ""))
    if req.get("error"):
        typer.echo(f"error: {req['error']}", err=True)
    if req["status"] != "succeeded":
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
        _print_json(_call(client.get, f"/v1/forget-requests/{request_id}"))


@forget_app.command("cancel")
def forget_cancel(request_id: str, url: UrlOpt = None, key: KeyOpt = None) -> None:
    req = _call(_client(url, key).post, f"/v1/forget-requests/{request_id}/cancel")
    typer.echo(f"{req['id']}: {req['status']}")


@adapters_app.command("list")
def adapters_list(model_id: str, url: UrlOpt = None, key: KeyOpt = None) -> None:
    """A model's adapter versions, newest first."""
    _print_json(_call(_client(url, key).get, f"/v1/models/{model_id}/adapters")["data"])


@adapters_app.command("download")
def adapters_download(
    adapter_id: Annotated[str, typer.Argument(help="Adapter id (see `adapters list`).")],
    out: Annotated[Path, typer.Option("--out", help="Directory to unpack the PEFT adapter into.")],
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Download an adapter, verify its sha256, unpack it (load it with peft on the base model)."""
    meta = _call(_client(url, key).download_adapter, adapter_id, out)
    typer.echo(f"adapter v{meta['version']} verified (sha256 {meta['sha256']}) → {out}")


@audits_app.command("list")
def audits_list(
    subject: Annotated[str | None, typer.Option(help="Subject id as submitted.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model id.")] = None,
    verdict: Annotated[
        str | None,
        typer.Option(help="e.g. forgotten | not_memorised | not_reached | model_damaged | failed | cancelled"),
    ] = None,
    limit: Annotated[int, typer.Option(help="Page size.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """Audit records, newest first."""
    page = _call(_client(url, key).get, "/v1/audits", subject=subject, model_id=model, verdict=verdict, limit=limit)
    if as_json:
        _print_json(page["data"])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("seq", "id", "request", "verdict", "forget MA before→after", "completed")
    for a in page["data"]:
        before = ((a["metrics"] or {}).get("before") or {}).get("forget", {}).get("ma")
        after = ((a["metrics"] or {}).get("after") or {}).get("forget", {}).get("ma")
        ma = f"{before:.3f} → {after:.3f}" if before is not None and after is not None else "-"
        table.add_row(str(a["seq"]), a["id"], a["request_id"], a["verdict"], ma, a["completed_at"])
    Console().print(table)


@audits_app.command("show")
def audits_show(audit_id: str, url: UrlOpt = None, key: KeyOpt = None) -> None:
    audit = _call(_client(url, key).get, f"/v1/audits/{audit_id}")
    print_audit(audit)


@audits_app.command("head")
def audits_head(
    out: Annotated[Path | None, typer.Option("--out", help="Write the signed head to this file.")] = None,
    url: UrlOpt = None,
    key: KeyOpt = None,
) -> None:
    """The audit chain's signed head (newest seq and hash). Keep heads outside the service and check them
    with `audits verify --head FILE`: a chain that lost records behind a saved head fails."""
    head = _call(_client(url, key).get, "/v1/audits/head")
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
    params: dict[str, Any] = {}
    if head is not None:
        saved = _saved_head(head, public_key)
        params = {"head_seq": saved["seq"], "head_hash": saved["hash"]}
    result = _call(_client(url, key).get, "/v1/audits/verify", **params)
    _print_json(result)
    if not result["ok"]:
        raise typer.Exit(1)


def _saved_head(path: Path, public_key: Path | None) -> dict:
    """A saved head, its signature checked when a public key is given (exit 1 if it does not verify)."""
    from api import certificates, chain_head

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


def print_audit(audit: dict) -> None:
    """The audit as the evidence a reader needs: the forget set against never-seen data (each membership
    score's AUC with its interval and the two-sided test), what the model kept against the original model,
    and which conditions of the verdict failed."""
    from rich.console import Console
    from rich.table import Table

    metrics = audit.get("metrics") or {}
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    verdict = metrics.get("verdict") or {}
    evidence = verdict.get("after") or verdict.get("before") or {}
    console = Console()
    table = Table(title=f"audit {audit['id']} — verdict: {audit['verdict']}")
    for col in ("forget set vs holdout (never seen)", "before", "after", "never-seen level"):
        table.add_column(col)
    b_mia, a_mia = before.get("mia") or {}, after.get("mia") or {}
    for name, score in (("loss", "loss"), ("zlib", "zlib"), ("min_k", "Min-k%")):
        t = (evidence.get("scores") or {}).get(name) or {}
        interval = f" [{_fmt(t.get('auc_low'))}, {_fmt(t.get('auc_high'))}] p={_fmt(t.get('p_value'))}" if t else ""
        table.add_row(
            f"MIA AUC, {score}", _fmt(b_mia.get(f"{name}_auc")), _fmt(a_mia.get(f"{name}_auc")) + interval, "0.5"
        )
    f0, f1, h1 = (
        before.get("forget") or {},
        after.get("forget") or {},
        after.get("holdout") or before.get("holdout") or {},
    )
    for m, label in (
        ("ma", "MA"),
        ("el10", "EL10"),
        ("extraction", "extraction (any prefix)"),
        ("perplexity", "perplexity"),
    ):
        table.add_row(f"forget {label}", _fmt(f0.get(m)), _fmt(f1.get(m)), f"holdout {_fmt(h1.get(m))}")
    console.print(table)
    original = metrics.get("original") or {}
    if after:
        kept = Table(title="what the model must keep (against the original model)")
        for col in ("measure", "original", "after"):
            kept.add_column(col)
        r0, r1 = original.get("retain") or {}, after.get("retain") or {}
        kept.add_row("retain MA", _fmt(r0.get("ma")), _fmt(r1.get("ma")))
        kept.add_row(
            "retain extraction, short prefix", _fmt(r0.get("extraction_short")), _fmt(r1.get("extraction_short"))
        )
        o_h = original.get("holdout") or {}
        kept.add_row(
            "holdout perplexity", _fmt(o_h.get("perplexity")), _fmt((after.get("holdout") or {}).get("perplexity"))
        )
        console.print(kept)
    failed = (evidence.get("failed") or []) + ((verdict.get("utility") or {}).get("failed") or [])
    console.print(f"failed conditions: {', '.join(failed) if failed else 'none'}; steps {metrics.get('steps')}")
    if evidence.get("note"):
        console.print(f"note: {evidence['note']}")
    console.print(
        f"adapter sha256 {audit.get('adapter_sha256')} · chain seq {audit['seq']}, hash {audit['hash'][:16]}…"
    )


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, int | float) else "-"


def demo(
    world_dir: Annotated[Path, typer.Option("--world-dir", help="Cache of the demo model (built if absent).")] = Path(
        "data/demo-world"
    ),
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Service data (default: a temp dir).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A CI-sized world (seconds instead of minutes).")] = False,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Unlearning step budget.")] = None,
) -> None:
    """The whole product in one command: build the demo model, start the service on the embedded default,
    register the model, submit the forget file over HTTP, follow it, download and verify the adapter, print
    the audit. Exit 0 only if the verdict is `forgotten` (or `not_memorised`: the model never knew them)."""
    import secrets
    import tempfile

    from rich.console import Console

    from api.server import ServerThread
    from api.settings import Settings
    from cli.client import Client
    from core.device import in_own_thread
    from core.worlds.pii import WorldSpec, build_world, tiny_spec

    console = Console()
    spec = tiny_spec() if quick else WorldSpec()
    world_root = world_dir / "quick" if quick else world_dir
    console.rule("1. demo model")
    # Trained in its own thread: torch work in the main thread would slow the job threads (core/device.py).
    world = in_own_thread(build_world, world_root, spec, log=lambda m: console.print(f"  {m}"))
    key = f"uk_demo_{secrets.token_urlsafe(24)}"
    tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="unlearnd-demo-")
    # The demo world's directory is the service's only model root: its model is the one that may be registered.
    settings = Settings(data_dir=data_dir or Path(tmp.name), bootstrap_key=key, model_roots=[world_root.resolve()])
    console.rule("2. service (embedded: SQLite + thread dispatcher + local blobs)")
    try:
        with ServerThread(settings) as server:
            console.print(f"  listening on {server.url}, data in {settings.data_dir}")
            client = Client(server.url, key)
            model = _call(
                client.post,
                "/v1/models",
                {
                    "name": "demo-pii",
                    "source": str(world.model_dir.resolve()),
                    "retain": _read_records(world.retain_path),
                    "holdout": _read_records(world.holdout_path),
                },
            )
            console.print(
                f"  registered model {model['id']} (retain {model['retain_count']}, holdout {model['holdout_count']})"
            )
            console.rule("3. forget request")
            body: dict[str, Any] = {
                "model_id": model["id"],
                "subject": {"id": "demo-subject", "legal_basis": "GDPR Art. 17", "ticket": "DEMO-1"},
                "records": _read_records(world.forget_path),
            }
            if max_steps:
                body["config"] = {"max_steps": max_steps}
            req = _call(client.post, "/v1/forget-requests", body, {"Idempotency-Key": f"demo-{secrets.token_hex(4)}"})
            console.print(f"  submitted {req['id']} ({req['record_count']} records), job {req['job_id']}")
            final = _watch(client, req["id"])
            console.rule("4. adapter")
            if final.get("adapter_version"):
                out = settings.data_dir / "downloaded-adapter"
                meta = _call(client.download_adapter, final["adapter_version"]["id"], out)
                console.print(
                    f"  version {meta['version']}, rank {meta['rank']}, sha256 {meta['sha256']} verified → {out}"
                )
            else:
                console.print(
                    f"  no new version (request {final['status']}: {final.get('error') or 'nothing to unlearn'})"
                )
            console.rule("5. audit")
            audits = _call(client.get, "/v1/audits", subject="demo-subject")["data"]
            audit = next(a for a in audits if a["request_id"] == req["id"])
            print_audit(audit)
            chain = _call(client.get, "/v1/audits/verify")
            console.print(f"  audit chain: {'intact' if chain['ok'] else 'BROKEN'} ({chain['checked']} records)")
            client.close()
    finally:
        if tmp is not None:
            tmp.cleanup()
    if audit["verdict"] not in ("forgotten", "not_memorised"):
        console.print(f"[red]verdict {audit['verdict']}[/red]")
        raise typer.Exit(1)
    console.print(f"[green]verdict: {audit['verdict']}[/green]")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("demo")(demo)
    app.command("worker", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(worker)
    app.add_typer(keys_app, name="keys")
    app.add_typer(models_app, name="models")
    app.add_typer(forget_app, name="forget")
    app.add_typer(adapters_app, name="adapters")
    app.add_typer(audits_app, name="audits")
    from cli import security_cmds  # keys revoke/list, certificate get/verify

    security_cmds.register(app)
