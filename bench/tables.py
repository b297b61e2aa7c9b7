"""Render the README's results tables from bench JSON files (bench/results/*.json).

python -m bench.tables bench/results
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _ms(cell: dict | None, digits: int = 2) -> str:
    if not cell or cell.get("mean") is None:
        return "–"
    if cell.get("sd"):
        return f"{cell['mean']:.{digits}f} ± {cell['sd']:.{digits}f}"
    return f"{cell['mean']:.{digits}f}"


def forgetting(result: dict) -> str:
    """README Results table of bench/forgetting: the verdict's evidence and what it cost."""
    lines = [
        "| forget | method + init | forgotten | AUC loss / zlib / Min-k (p loss) | AUC vs fresh never-seen "
        "| retain MA drop | retain extr. kept | generic ppl × | steps | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        aucs = " / ".join(_ms(r[f"{s}_auc"]) for s in ("loss", "zlib", "min_k"))
        fresh = " / ".join(_ms(r[f"{s}_auc_fresh"]) for s in ("loss", "zlib", "min_k"))
        lines.append(
            f"| {r['forget_size']} | {r['method']}+{r['init']} | {r['forgotten']:.0%} | {aucs} ({_ms(r['loss_p'])}) | "
            f"{fresh} | {_ms(r['retain_ma_drop'], 3)} | {_ms(r['retain_extraction_kept'])} | "
            f"{_ms(r['generic_perplexity_ratio'], 3)} | {_ms(r['steps'], 0)} | {_ms(r['seconds'], 1)} |"
        )
    return "\n".join(lines)


def _ci(cell: dict | None, digits: int = 2) -> str:
    if not cell or cell.get("mean") is None:
        return "–"
    if cell.get("n", 0) > 1:
        return f"{cell['mean']:.{digits}f} [{cell['lo']:.{digits}f}, {cell['hi']:.{digits}f}]"
    return f"{cell['mean']:.{digits}f}"


def restor(result: dict) -> str:
    """README table of bench/restor: per context, the clean and corrupted models, then each method × init
    (mean [95 % interval] over seeds)."""
    lines = [
        "| context | model | QA accuracy (corrupted entities) | restoration ratio [95 % CI] | untouched accuracy "
        "| p(correct) | p(injected) | answers injected |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in result["summary"]:
        name = s["method"] if s["init"] == "-" else f"{s['method']}+{s['init']}"
        lines.append(
            f"| {s['level']} | {name} | {_ms(s['accuracy'])} | {_ci(s.get('restoration'))} | "
            f"{_ms(s.get('untouched_accuracy'))} | {_ms(s.get('p_correct'))} | {_ms(s.get('p_injected'))} | "
            f"{_ms(s.get('injected_accuracy'))} |"
        )
    return "\n".join(lines)


def stream(result: dict) -> str:
    """README table of bench/stream: the sequential chain's bars, then the burst."""
    seq, burst = result["sequential"], result["burst"]
    lines = [
        "| requests × people | outcomes | max rank | max adapter MB | earlier requests extracted "
        "| worst earlier MA − holdout MA | retain MA drop | retain extraction kept |",
        "|---|---|---|---|---|---|---|---|",
        f"| {seq['requests']} × {seq['per_request']} | "
        + ", ".join(f"{o}: {seq['outcomes'].count(o)}" for o in sorted(set(seq["outcomes"])))
        + f" | {seq['max_rank']} | {seq['max_adapter_mb']} | {seq['earlier_requests_extracted']} | "
        f"{seq['worst_earlier_ma_minus_holdout']:+.3f} | {seq['retain_ma_drop']} | {seq['retain_extraction_kept']} |",
        "",
        "| burst | jobs | submitted within | single request | last verdict | ratio | verdicts | audits "
        "| certificates |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {burst['requests']} × {burst['per_request']} | {burst['jobs']} | {burst['submitted_within_seconds']} s | "
        f"{burst['single']['seconds']} s | {burst['last_verdict_seconds']} s | {burst['ratio_to_single']}× | "
        + ", ".join(f"{v}: {burst['verdicts'].count(v)}" for v in sorted({str(x) for x in burst["verdicts"]}))
        + f" | {burst['audits']} | {burst['certificates']} |",
    ]
    return "\n".join(lines)


def speed(before: dict, after: dict) -> str:
    """bench/speed.py before and after the performance work, same machine, as README rows."""

    def row(label: str, get, target: str = "") -> str:
        def cell(r: dict) -> str:
            try:
                return get(r)
            except (KeyError, IndexError, TypeError):
                return "–"

        return f"| {label} | {cell(before)} | {cell(after)} | {target} |"

    def eff(key: str):
        return lambda r: f"{r['summary']['loop_efficiency'][key]:.2f}"

    def phase(name: str):
        return lambda r: f"{r['job']['phases'][name]['seconds']:.2f} s"

    def api(c: str):
        return lambda r: (
            f"{r['summary']['api_throughput_ratio'][c]:.2f} ({_level(r, c)['service']['rps']:.0f} vs "
            f"{_level(r, c)['bare']['rps']:.0f} req/s); p99 {r['summary']['api_p99_ms'][c]:.0f} ms "
            f"(bare {_level(r, c)['bare']['p99_ms']:.0f})"
        )

    def peer(r: dict) -> str:
        p = r["peer"]
        return (
            f"{p['trainer_lora']['seconds_to_stop']:.1f} s vs {p['ours_lora']['seconds_to_stop']:.1f} s "
            f"({p['trainer_vs_ours_time']:.2f}×); FILA {p['ours_fila']['seconds_to_stop']:.1f} s"
        )

    lines = [
        f"| measure | before ({before['machine']['commit']}) | after ({after['machine']['commit']}) | target |",
        "|---|---|---|---|",
        row("fp32 matmul peak, 1024³, 2 threads", lambda r: f"{r['peak']['gflops_median']:.0f} GFLOP/s"),
        row("step efficiency, demo 4×256, batch 8", eff("demo 4x256 b8"), "≥ 0.60"),
        row("step efficiency, demo 4×256, batch 32", eff("demo 4x256 b32"), "≥ 0.60"),
        row("step efficiency, 8×512, batch 8", eff("large 8x512 b8")),
        row("step efficiency, 8×512, batch 32", eff("large 8x512 b32")),
        row("demo step, batch 8 + 8", lambda r: f"{r['loop']['rows'][0]['step_seconds_median'] * 1000:.0f} ms"),
        row("one demo job (load + run_forget)", lambda r: f"{r['job']['job_seconds']:.2f} s"),
        row("· evaluate before", phase("evaluate before")),
        row("· Fisher", phase("fisher")),
        row("· FILA SVD", phase("fila svd")),
        row("· unlearning steps", phase("unlearning steps")),
        row("· stopping checks", phase("stopping checks (in loop)")),
        row("· evaluate after", phase("evaluate after")),
        row("Fisher + FILA share of the job", lambda r: f"{r['summary']['fisher_plus_fila_share']:.1%}", "≤ 20 %"),
        row(
            "service: submission → adapter, vs bare run_forget",
            lambda r: f"{r['summary']['service_overhead']:.2f}×",
            "≤ 1.3×",
        ),
        row(
            "second job, same model: model load",
            lambda r: (
                f"{r['service']['cache_miss_load_seconds']:.3f} s → {r['service']['cache_hit_load_seconds']:.4f} s"
            ),
            "skips the load",
        ),
        row("HF Trainer route vs ours to the stopping rule (LoRA)", peer, "faster"),
        row("status polling vs bare endpoint, 1 client", api("1"), "≥ 0.5"),
        row("status polling vs bare endpoint, 10 clients", api("10"), "≥ 0.5"),
        row("status polling vs bare endpoint, 50 clients", api("50"), "≥ 0.5, p99 < 50 ms"),
    ]
    return "\n".join(lines)


def scale(result: dict) -> str:
    """bench/scale.py (or bench/gpu_check.py) rows: one per model size and forget-set size."""
    lines = [
        f"Device: {result['device']}; matmul peak {result['peak']['gflops_median']:,.0f} GFLOP/s "
        f"({result['peak']['dtype']}, measured in the same run).",
        "",
        "| model | params | forget | job s | evaluate (before + after) | Fisher + FILA | steps | export "
        "| peak memory GB | step s | step efficiency |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in result.get("sizes", []):
        for r in size.get("rows", []):
            head = f"| {size['size']} | {size.get('params', 0) / 1e6:,.0f}M | {r['forget_records']} |"
            if "job_seconds" not in r:
                lines.append(f"{head} not measured ({r.get('skipped', '?')}) |" + " |" * 7)
                continue
            sh = r["phase_shares"]
            lines.append(
                f"{head} {r['job_seconds']:.1f} | {sh.get('evaluate_before', 0) + sh.get('evaluate_after', 0):.0%} "
                f"| {sh.get('fisher_fila', 0):.0%} | {sh.get('unlearning', 0):.0%} | {sh.get('exporting', 0):.0%} "
                f"| {r['peak_memory_gb']:.1f} | {r['step_seconds_median']:.3f} | {r['step_efficiency']:.2f} |"
            )
        if size.get("efficiency"):
            e = size["efficiency"]
            lines.append(
                f"\nLoop alone at {size['size']}, {e['batch_forget']} + {e['batch_retain']} rows "
                f"({e['tokens_per_step']} tokens a step): {e['step_seconds_median']:.3f} s a step, "
                f"{e['step_gflops']:,.0f} GFLOP/s, efficiency {e['efficiency']:.2f}."
            )
    return "\n".join(lines)


def _level(r: dict, c: str) -> dict:
    return next(lv for lv in r["api"]["levels"] if str(lv["concurrency"]) == c)


RENDER = {"forgetting": forgetting, "restor": restor, "stream": stream}


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results")
    for name, render in RENDER.items():
        path = folder / f"{name}.json"
        if path.is_file():
            result = json.loads(path.read_text())
            print(f"### {name} (commit {result['machine'].get('commit', '?')})\n\n{render(result)}\n")
    for path in sorted(folder.glob("scale-*.json")) + sorted(folder.glob("gpu-check-*.json")):
        if "dry-run" not in path.name:
            print(f"### {path.stem}\n\n{scale(json.loads(path.read_text()))}\n")
    before, after = folder / "speed-before.json", folder / "speed.json"
    if before.is_file() and after.is_file():
        print(f"### speed\n\n{speed(json.loads(before.read_text()), json.loads(after.read_text()))}\n")


if __name__ == "__main__":
    main()
