"""Forgetting on the synthetic PII world, judged as the audit judges it (core/verdict.py): is the forget set
indistinguishable from never-seen people on per-record membership scores, at what cost to what the model must
keep? Every method × init, forget sets of 1, 10 and 30 people, several seeds, same data and budget.

Per run: each score's AUC forget vs. the holdout's verdict half with its two-sided U test p-value, the
verdict, retain MA, short-prefix retain extraction kept (after ÷ original), generic perplexity ratio (the
world's generic sentences), steps and seconds. And one check the service cannot make: the AUCs against a
*fresh* never-seen sample (people generated for this bench only, on which nothing was calibrated, anchored or
tested), measured on the adapter loaded from disk with peft. Mean ± sd over seeds, and a Pareto plot (forget
AUC distance from 0.5 against retain extraction kept).

    python -m bench.forgetting [--quick] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import random
import sys

from bench.common import emit, machine, mean_sd, pii_world, pyplot

GRID = [
    ("ctd", "fila"),
    ("ctd", "lora"),
    ("ihl", "fila"),
    ("ihl", "lora"),
    ("npo", "fila"),
    ("gd", "fila"),
    ("kl", "fila"),
    ("ga", "fila"),
]
QUICK_GRID = [("ctd", "fila"), ("ga", "lora")]
SCORES = ("loss", "zlib", "min_k")
FRESH_PEOPLE = 50


def fresh_people(world, n: int, seed: int = 12345) -> list:
    """Never-seen people of the world's distribution that are in none of its files (names included)."""
    from unlearnd.core.records import Record
    from unlearnd.core.worlds.pii import make_people

    used = {r.text.split(" was born")[0] for r in world.forget + world.retain + world.holdout}
    people = make_people(n + len(used) + 50, random.Random(seed))
    fresh = [p.render() for p in people if f"{p.first} {p.last}" not in used]
    return [Record(text=t) for t in fresh[:n]]


def run(
    quick: bool, seeds: int, sizes: list[int], max_steps: int, grid: list | None = None, overrides: dict | None = None
) -> dict:
    import tempfile
    from pathlib import Path

    from unlearnd.core.config import UnlearnConfig
    from unlearnd.core.modeling import load_model
    from unlearnd.core.pipeline import run_forget
    from unlearnd.core.records import read_records

    world = pii_world(quick)
    loaded = load_model(world.model_dir)
    trained = world.forget + world.retain  # the forget file's people first, as in the demo
    holdout = world.holdout
    generic = read_records(world.generic_path)
    fresh = fresh_people(world, FRESH_PEOPLE)
    base_scores = _outside_scores(loaded, None, trained[:1], fresh, generic)
    rows = []
    for size in sizes:
        forget, retain = trained[:size], trained[size:]
        for method, init in grid or (QUICK_GRID if quick else GRID):
            runs = []
            for seed in range(seeds):
                config = UnlearnConfig(method=method, init=init, seed=seed, max_steps=max_steps, **(overrides or {}))
                out = Path(tempfile.mkdtemp(prefix=f"bench-{method}-{init}-"))
                result = run_forget(loaded, forget, retain, holdout, config, out_dir=out)
                r = result.report
                r["outside"] = _outside_scores(loaded, result.adapter_dir, forget, fresh, generic)
                r["outside"]["generic_perplexity_ratio"] = (
                    r["outside"]["generic_perplexity"] / base_scores["generic_perplexity"]
                )
                runs.append(r)
                aucs = r["outside"]["fresh_auc"]
                print(
                    f"size {size} {method}+{init} seed {seed}: {r['verdict']['outcome']} in {r['steps']} steps; "
                    f"AUC vs fresh {aucs['loss']:.2f}/{aucs['zlib']:.2f}/{aucs['min_k']:.2f}",
                    file=sys.stderr,
                )
            rows.append(_summarise(size, method, init, runs))
    return {
        "benchmark": "forgetting",
        "quick": quick,
        "seeds": seeds,
        "sizes": sizes,
        "max_steps": max_steps,
        "config_overrides": overrides or {},
        "world": world.info["spec"],
        "machine": machine(),
        "fresh_people": len(fresh),
        "base": base_scores,
        "results": rows,
    }


def _outside_scores(loaded, adapter_dir, forget, fresh, generic) -> dict:
    """What only the bench can check: the base (+ the adapter from disk, with peft) on a fresh never-seen
    sample, and generic perplexity."""
    import torch
    from peft import PeftModel

    from unlearnd.core.data import encode_set
    from unlearnd.core.metrics import evaluate_set
    from unlearnd.core.stats import compare

    model = PeftModel.from_pretrained(loaded.model, str(adapter_dir)) if adapter_dir else loaded.model
    try:
        model.eval()
        cpu, tok = torch.device(loaded.device), loaded.tokenizer
        f = evaluate_set(model, encode_set(tok, forget), cpu, generate=False).familiarity()
        h = evaluate_set(model, encode_set(tok, fresh), cpu, generate=False).familiarity()
        gen = evaluate_set(model, encode_set(tok, generic), cpu, generate=False).metrics.perplexity
    finally:
        if adapter_dir:
            model.unload()
    tests = {s: compare(f[s], h[s]) for s in SCORES}
    return {
        "fresh_auc": {s: t.auc for s, t in tests.items()},
        "fresh_p": {s: t.p_value for s, t in tests.items()},
        "generic_perplexity": gen,
    }


def _summarise(size: int, method: str, init: str, runs: list[dict]) -> dict:
    def after(r, *keys):
        v = r["after"] or r["before"]
        for k in keys:
            v = v[k]
        return v

    def verdict_scores(r):
        v = r["verdict"]["after"] or r["verdict"]["before"] or {"scores": {}}
        return v["scores"]

    row = {
        "forget_size": size,
        "method": method,
        "init": init,
        "outcomes": [r["verdict"]["outcome"] for r in runs],
        "forgotten": sum(r["verdict"]["outcome"] == "forgotten" for r in runs) / len(runs),
        "steps": mean_sd([r["steps"] for r in runs]),
        "seconds": mean_sd([r["wall_seconds"] for r in runs]),
        "trainable_params": runs[0]["trainable_params"],
        "retain_ma": mean_sd([after(r, "retain", "ma") for r in runs]),
        "retain_ma_drop": mean_sd([r["original"]["retain"]["ma"] - after(r, "retain", "ma") for r in runs]),
        "retain_extraction_kept": mean_sd(
            [
                after(r, "retain", "extraction_short") / max(1e-9, r["original"]["retain"]["extraction_short"])
                for r in runs
            ]
        ),
        "generic_perplexity_ratio": mean_sd([r["outside"]["generic_perplexity_ratio"] for r in runs]),
        "holdout_perplexity_ratio": mean_sd(
            [after(r, "holdout", "perplexity") / r["original"]["holdout"]["perplexity"] for r in runs]
        ),
        "forget_extraction": mean_sd([after(r, "forget", "extraction") for r in runs]),
        "forget_ma": mean_sd([after(r, "forget", "ma") for r in runs]),
        "holdout_ma": mean_sd([after(r, "holdout", "ma") for r in runs]),
    }
    for s in SCORES:
        row[f"{s}_auc"] = mean_sd([verdict_scores(r)[s]["auc"] for r in runs])
        row[f"{s}_p"] = mean_sd([verdict_scores(r)[s]["p_value"] for r in runs])
        row[f"{s}_auc_fresh"] = mean_sd([r["outside"]["fresh_auc"][s] for r in runs])
    row["failed"] = sorted(
        {c for r in runs for c in ((r["verdict"]["after"] or {}).get("failed", []) + _utility_failed(r))}
    )
    return row


def _kept(extraction: float, r: dict) -> float:
    return extraction / max(1e-9, r["original"]["retain"]["extraction_short"])


def _utility_failed(r: dict) -> list[str]:
    return (r["verdict"].get("utility") or {}).get("failed", [])


def plot(result: dict, path) -> None:
    """Pareto view: how far the forget set stays from "indistinguishable" (the largest |AUC − 0.5| of the
    three scores, against the verdict's holdout half) against how much short-prefix retain extraction is kept.
    Lower left is the goal corner's opposite: the best methods sit at the bottom right."""
    plt = pyplot()
    sizes = result["sizes"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4.4), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        for row in (r for r in result["results"] if r["forget_size"] == size):
            dist = max(abs(row[f"{s}_auc"]["mean"] - 0.5) for s in SCORES)
            kept = row["retain_extraction_kept"]["mean"]
            marker = {"fila": "o", "lora": "s", "full": "^"}[row["init"]]
            ax.errorbar(
                kept,
                dist,
                xerr=row["retain_extraction_kept"]["sd"],
                fmt=marker,
                capsize=3,
                label=f"{row['method']}+{row['init']} ({row['forgotten']:.0%} forgotten)",
            )
        ax.axhline(0.1, color="grey", ls=":", lw=1, label="verdict's AUC band")
        ax.set_title(f"forget {size} people")
        ax.set_xlabel("retain extraction kept (short prefix, after ÷ original)")
        ax.set_ylabel("max |AUC − 0.5| over loss, zlib, Min-k%")
        ax.set_xlim(-0.05, 1.2)
        ax.set_ylim(-0.02, 0.55)
        ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny world, one seed, two methods (CI smoke test)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=None, help="step budget (default: each method's)")
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    ap.add_argument("--methods", nargs="*", default=None, help="method+init pairs, e.g. ctd+fila ihl+lora")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a config field for every run (JSON value)"
    )
    args = ap.parse_args()
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    seeds = 1 if args.quick else args.seeds
    sizes = args.sizes or ([1, 4] if args.quick else [1, 10, 30])
    grid = [tuple(m.split("+")) for m in args.methods] if args.methods else None
    result = run(args.quick, seeds, sizes, 20 if args.quick else args.max_steps, grid, overrides)
    path = emit("forgetting-quick" if args.quick else "forgetting", result)
    plot(result, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
