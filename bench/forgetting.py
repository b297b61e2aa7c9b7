"""TDEC-style forgetting on the synthetic PII world: every method × init, forget sets of 1, 10 and 30 people,
several seeds, same data and budget. Reports steps and seconds to the stopping rule, forget/retain/holdout
MA, EL10, extraction, perplexity, MIA AUC and trainable parameters (mean ± sd over seeds).

    python -m bench.forgetting [--quick] [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys

from bench.common import emit, machine, mean_sd, pii_world, pyplot

GRID = [(m, i) for m in ("ihl", "ga", "gd", "kl", "npo") for i in ("fila", "lora")] + [("ihl", "full"), ("ga", "full")]
QUICK_GRID = [("ihl", "fila"), ("ga", "lora")]
METRICS = ("ma", "el10", "extraction", "perplexity")


def run(quick: bool, seeds: int, sizes: list[int], max_steps: int) -> dict:
    from core.config import UnlearnConfig
    from core.modeling import load_model
    from core.pipeline import run_forget

    world = pii_world(quick)
    loaded = load_model(world.model_dir)
    trained = world.forget + world.retain  # the forget file's people first, as in the demo
    holdout = world.holdout
    rows = []
    for size in sizes:
        forget, retain = trained[:size], trained[size:]
        for method, init in QUICK_GRID if quick else GRID:
            runs = []
            for seed in range(seeds):
                config = UnlearnConfig(method=method, init=init, seed=seed, max_steps=max_steps)
                r = run_forget(loaded, forget, retain, holdout, config, out_dir=_tmp(method, init)).report
                runs.append(r)
                print(
                    f"size {size} {method}+{init} seed {seed}: steps {r['steps']} reached {r['reached']} "
                    f"forget ext {r['after']['forget']['extraction']:.2f} retain MA {r['after']['retain']['ma']:.3f}",
                    file=sys.stderr,
                )
            rows.append(_summarise(size, method, init, runs))
    return {
        "benchmark": "forgetting",
        "quick": quick,
        "seeds": seeds,
        "sizes": sizes,
        "max_steps": max_steps,
        "world": world.info["spec"],
        "machine": machine(),
        "before": _before(runs[0]),
        "results": rows,
    }


def _tmp(method: str, init: str):
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix=f"bench-{method}-{init}-"))


def _before(report: dict) -> dict:
    return {s: report["before"][s] for s in ("retain", "holdout")}


def _summarise(size: int, method: str, init: str, runs: list[dict]) -> dict:
    row = {
        "forget_size": size,
        "method": method,
        "init": init,
        "reached": sum(r["reached"] for r in runs) / len(runs),
        "steps": mean_sd([r["steps"] for r in runs]),
        "seconds": mean_sd([r["wall_seconds"] for r in runs]),
        "trainable_params": runs[0]["trainable_params"],
        "mia_loss_auc": mean_sd([r["after"]["mia"]["loss_auc"] for r in runs]),
        "mia_mink_auc": mean_sd([r["after"]["mia"]["mink_auc"] for r in runs]),
    }
    for s in ("forget", "retain", "holdout"):
        for m in METRICS:
            row[f"{s}_{m}"] = mean_sd([r["after"][s][m] for r in runs])
    row["forget_before_extraction"] = mean_sd([r["before"]["forget"]["extraction"] for r in runs])
    return row


def plot(result: dict, path) -> None:
    """Forgetting (forget-set MA after; the dotted line is the holdout's, the stopping rule's bar) against
    utility (retain MA after; the dashed line is before unlearning). Every method reaches extraction 0, so
    MA is the axis that separates them."""
    plt = pyplot()
    sizes = result["sizes"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4.4), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        for row in (r for r in result["results"] if r["forget_size"] == size):
            marker = {"fila": "o", "lora": "s", "full": "^"}[row["init"]]
            ax.errorbar(
                row["forget_ma"]["mean"],
                row["retain_ma"]["mean"],
                xerr=row["forget_ma"]["sd"],
                yerr=row["retain_ma"]["sd"],
                fmt=marker,
                capsize=3,
                label=f"{row['method']}+{row['init']}",
            )
        ax.axhline(result["before"]["retain"]["ma"], color="grey", ls="--", lw=1, label="retain MA before")
        ax.axvline(result["before"]["holdout"]["ma"], color="grey", ls=":", lw=1, label="holdout MA (the bar)")
        ax.set_title(f"forget {size} people")
        ax.set_xlabel("forget-set MA after (lower = forgotten)")
        ax.set_ylabel("retain MA after (higher = utility kept)")
        ax.set_xlim(-0.05, 1.0)
        ax.set_ylim(-0.05, 1.0)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny world, one seed, two methods (CI smoke test)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=100)
    args = ap.parse_args()
    seeds = 1 if args.quick else args.seeds
    sizes = [1, 4] if args.quick else [1, 10, 30]
    result = run(args.quick, seeds, sizes, 20 if args.quick else args.max_steps)
    path = emit("forgetting-quick" if args.quick else "forgetting", result)
    plot(result, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
