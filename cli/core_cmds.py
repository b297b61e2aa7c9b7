"""Core commands: `unlearnd demo-model` (build the synthetic PII world) and `unlearnd unlearn` (one run,
no service). Bad input exits with status 2 and a one-line message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def demo_model(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the world into.")],
    people: Annotated[int | None, typer.Option(help="Trained people (forget + retain); 300, --chat 60.")] = None,
    forget: Annotated[int | None, typer.Option(help="People in forget.jsonl; 10, --chat 6.")] = None,
    holdout: Annotated[int | None, typer.Option(help="Never-trained people in holdout.jsonl; 50, --chat 24.")] = None,
    seed: Annotated[int, typer.Option(help="Seed: the same seed builds the same world.")] = 0,
    size: Annotated[
        str, typer.Option(help="default (4 layers x 256, minutes) or tiny (2 x 128, seconds).")
    ] = "default",
    chat: Annotated[
        bool,
        typer.Option(
            "--chat",
            help="Conversations instead of texts: a tiny Llama with a chat template answers questions about "
            "the people (seconds; --size does not apply).",
        ),
    ] = False,
) -> None:
    """Generate fictitious people, train a tokenizer and a tiny GPT-Neo until it memorises them (with --chat:
    a tiny Llama with a chat template, on conversations)."""
    from dataclasses import replace

    from unlearnd.core.worlds.chat import ChatWorldSpec, build_chat_world
    from unlearnd.core.worlds.pii import WorldSpec, build_world, tiny_spec

    defaults = ChatWorldSpec() if chat else WorldSpec()
    people = defaults.people if people is None else people
    forget = defaults.forget if forget is None else forget
    holdout = defaults.holdout if holdout is None else holdout
    if people < 2 or not 1 <= forget < people or holdout < 1:
        _fail("need people >= 2, 1 <= forget < people and holdout >= 1")
    if size not in ("default", "tiny"):
        _fail(f"unknown size {size!r}; choose default or tiny")
    base = WorldSpec() if size == "default" else tiny_spec()
    try:
        if chat:
            spec = ChatWorldSpec(people=people, forget=forget, holdout=holdout, seed=seed)
            world = build_chat_world(out, spec)
        else:
            world = build_world(out, replace(base, people=people, forget=forget, holdout=holdout, seed=seed))
    except ValueError as e:
        _fail(str(e))
    typer.echo(
        f"model: {world.model_dir}\nforget: {world.forget_path}\nretain: {world.retain_path}\n"
        f"holdout: {world.holdout_path}"
    )


def unlearn(
    model: Annotated[Path, typer.Option("--model", help="Local Hugging Face causal-LM directory.")],
    forget: Annotated[Path, typer.Option("--forget", help="JSONL of records to forget.")],
    out: Annotated[Path, typer.Option("--out", help="Adapter directory to write (with report.json).")],
    retain: Annotated[Path | None, typer.Option("--retain", help="JSONL of records to keep.")] = None,
    holdout: Annotated[Path | None, typer.Option("--holdout", help="JSONL of never-trained records.")] = None,
    method: Annotated[
        str, typer.Option(help="ctd (default: needs --holdout) | ihl | ga | gd | kl | npo | restore")
    ] = "ctd",
    init: Annotated[
        str | None, typer.Option(help="fila | lora | full (default: the method's; lora for ctd, fila otherwise)")
    ] = None,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    alpha: Annotated[float | None, typer.Option(help="LoRA alpha (default 2·rank).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: the method's).")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Step budget (default: the method's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    previous: Annotated[Path | None, typer.Option(help="Adapter this one builds on (cumulative).")] = None,
    anchor_samples: Annotated[
        int | None,
        typer.Option(
            "--anchor-samples", help="ctd: the original model's own samples its anchor holds (default 64; 0: none)."
        ),
    ] = None,
    restore_from: Annotated[
        Path | None,
        typer.Option(
            "--restore-from",
            help="The checkpoint from before corrupting documents (a model directory, same tokenizer): the "
            "restore method distils it on the forget records (implies --method restore).",
        ),
    ] = None,
) -> None:
    """Unlearn the forget records from a model and write a PEFT LoRA adapter plus report.json."""
    from unlearnd.core.config import UnlearnConfig
    from unlearnd.core.errors import CoreError
    from unlearnd.core.records import read_records

    try:
        config = UnlearnConfig(
            method="restore" if restore_from is not None and method == "ctd" else method,
            init=init,
            rank=rank,
            alpha=alpha if alpha is not None else 2.0 * rank,
            lr=lr,
            max_steps=max_steps,
            seed=seed,
            anchor_samples=anchor_samples,
            restore_from=str(restore_from) if restore_from is not None else None,
        )
        forget_records = read_records(forget)
        if not forget_records:
            _fail(f"{forget}: the forget set is empty")
        retain_records = read_records(retain) if retain else []
        holdout_records = read_records(holdout) if holdout else []
        from unlearnd.core.modeling import load_model
        from unlearnd.core.pipeline import run_forget

        loaded = load_model(model)
        teacher = load_model(restore_from, device=str(loaded.device)) if restore_from is not None else None
        result = run_forget(
            loaded,
            forget_records,
            retain_records,
            holdout_records,
            config,
            out_dir=out,
            previous_adapter=previous,
            progress=_console_progress(),
            teacher=teacher,
        )
    except CoreError as e:
        _fail(str(e))
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result.report, indent=2))
    _print_summary(result.report)
    if result.adapter_dir is not None:
        typer.echo(f"adapter written to {out}")
    else:
        typer.echo(f"no adapter: {result.outcome} (report in {out / 'report.json'})")


def _console_progress():
    from unlearnd.cli.output import console as make_console

    console = make_console(stderr=True)
    last = {"phase": None}

    def report(phase: str, step: int, total: int, metrics: dict) -> None:
        if phase != last["phase"]:
            console.print(f"[bold]{phase}[/bold]")
            last["phase"] = phase
        if phase == "unlearning" and "forget_ma" in metrics:
            aucs = "  ".join(
                f"{k[:-4]} AUC {metrics[k]:.2f}" for k in ("loss_auc", "zlib_auc", "min_k_auc") if k in metrics
            )
            failed = metrics.get("failed")
            still = f"  failing: {', '.join(failed)}" if failed else ""
            console.print(f"  step {step}/{total}  forget MA {metrics['forget_ma']:.3f}  {aucs}{still}")

    return report


def _print_summary(report: dict) -> None:
    """The run as the audit would show it (cli/audit_view.print_audit), from the local report."""
    from unlearnd.cli.audit_view import print_audit
    from unlearnd.cli.output import console

    audit = {
        "id": "local run",
        "verdict": report["verdict"]["outcome"],
        "metrics": report,
        "adapter_sha256": (report.get("adapter") or {}).get("weights_sha256"),
        "seq": "-",
        "hash": "-" * 16,
    }
    print_audit(audit, console())


def register(app: typer.Typer) -> None:
    app.command("demo-model")(demo_model)
    app.command("unlearn")(unlearn)
