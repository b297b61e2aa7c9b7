"""`unlearnd demo`: the whole product in one command, as a newcomer reads it.

It builds the demo model, starts the service on the embedded default, registers the model, submits the
forget file over HTTP (through the SDK), follows it with the target each number must reach, downloads and
verifies the adapter, and prints the audit with what MA, EL10 and the MIA AUC mean, a flag on any retain
loss and a paragraph reading the table. Everything it names afterwards exists afterwards: the adapter, a
plot of the unlearning curve and the evidence report are written to `--out` (the service's own data is a
temporary directory, removed on exit). Library progress bars and warnings are kept out of the output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def demo(
    world_dir: Annotated[Path, typer.Option("--world-dir", help="Cache of the demo model (built if absent).")] = Path(
        "data/demo-world"
    ),
    out: Annotated[
        Path, typer.Option("--out", help="Where the adapter, the plot and the evidence report are written.")
    ] = Path("data/demo-output"),
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Service data (default: a temp dir).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A CI-sized world (seconds instead of minutes).")] = False,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Unlearning step budget.")] = None,
) -> None:
    """The whole product in one command: build the demo model, start the service, forget 10 people over
    HTTP, verify the adapter, explain the audit. Exit 0 only if the verdict is `forgotten` (or
    `not_memorised`: the model never knew them)."""
    from unlearnd.cli.output import quiet_libraries

    quiet_libraries()
    import secrets
    import shutil
    import tempfile

    from unlearnd import Client
    from unlearnd.api.server import ServerThread
    from unlearnd.api.settings import Settings
    from unlearnd.cli.audit_view import print_audit
    from unlearnd.cli.output import console as make_console
    from unlearnd.cli.output import section
    from unlearnd.cli.progress import follow
    from unlearnd.cli.service_cmds import _call, _read_records
    from unlearnd.core.device import in_own_thread
    from unlearnd.core.worlds.pii import WorldSpec, build_world, tiny_spec

    console = make_console()
    spec = tiny_spec() if quick else WorldSpec()
    world_root = world_dir / "quick" if quick else world_dir
    section(console, "1. demo model")
    # Trained in its own thread: torch work in the main thread would slow the job threads (core/device.py).
    world = in_own_thread(build_world, world_root, spec, log=lambda m: console.print(f"  {m}"))
    key = f"uk_demo_{secrets.token_urlsafe(24)}"
    tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="unlearnd-demo-")
    # The demo world's directory is the service's only model root: its model is the one that may be registered.
    settings = Settings(data_dir=data_dir or Path(tmp.name), bootstrap_key=key, model_roots=[world_root.resolve()])
    section(console, "2. service (embedded: SQLite + thread dispatcher + local blobs)")
    try:
        with ServerThread(settings) as server, Client(server.url, key) as client:
            console.print(f"  listening on {server.url} (its data is temporary: {settings.data_dir})")
            model = _call(
                client.register_model,
                "demo-pii",
                str(world.model_dir.resolve()),
                retain=_read_records(world.retain_path),
                holdout=_read_records(world.holdout_path),
            )
            console.print(f"  registered model {model.id} (retain {model.retain_count}, holdout {model.holdout_count})")
            section(console, "3. forget request")
            req = _call(
                client.forget,
                model.id,
                _read_records(world.forget_path),
                subject="demo-subject",
                ticket="DEMO-1",
                config={"max_steps": max_steps} if max_steps else None,
                idempotency_key=f"demo-{secrets.token_hex(4)}",
            )
            console.print(f"  submitted {req.id} ({req.record_count} records), job {req.job_id}")
            console.print(
                "  each check scores the forget records against never-seen ones: the membership AUCs must "
                "reach 0.5 ± 0.1 (chance), MA the never-seen level, extraction 0"
            )
            final = _call(follow, client, req.id, console)
            section(console, "4. adapter")
            if out.exists():
                shutil.rmtree(out)  # this run's results only
            out.mkdir(parents=True)
            if final.adapter_version:
                meta = _call(client.download_adapter, final.adapter_version.id, out / "adapter")
                console.print(f"  version {meta.version}, rank {meta.rank}, sha256 {meta.sha256} verified")
                console.print(f"  → {out / 'adapter'}")
            else:
                console.print(f"  no new version (request {final.status}: {final.error or 'nothing to unlearn'})")
            section(console, "5. audit")
            audit = _call(client.audit, final.audit_id).model_dump(mode="json")
            print_audit(audit, console, explain=True)
            chain = _call(client.verify_chain)
            console.print(f"  audit chain: {'intact' if chain.ok else 'BROKEN'} ({chain.checked} records)")
            files = _save_results(client, audit, out)
            section(console, "6. results (kept after the demo)")
            for what, path in files:
                console.print(f"  {what}: {path}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    if audit["verdict"] not in ("forgotten", "not_memorised"):
        console.print(f"[red]verdict {audit['verdict']}[/red]")
        raise typer.Exit(1)
    console.print(f"[green]verdict: {audit['verdict']}[/green]")


def _save_results(client: Any, audit: dict, out: Path) -> list[tuple[str, Path]]:
    """The unlearning curve as PNG and the evidence report, beside the adapter."""
    from unlearnd.api.report import plots
    from unlearnd.cli.service_cmds import _call

    files = []
    if (out / "adapter").is_dir():
        files.append(("adapter (PEFT LoRA on the unmodified base)", out / "adapter"))
    metrics = audit.get("metrics") or {}
    fig = plots.unlearning_curve(metrics.get("history") or [], metrics)
    if fig is not None:
        files.append(("unlearning curve (PNG)", plots.save_png(fig, out / "unlearning-curve.png")))
    report = out / f"evidence-{audit['id']}.html"
    report.write_text(_call(client.report, audit["id"]), encoding="utf-8")
    files.append(("evidence report (HTML)", report))
    return files
