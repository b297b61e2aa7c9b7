"""RESTOR-style restoration (Rezaei et al. 2024, arXiv 2411.00204) on the synthetic facts world: a clean model
that answers its questions → corrupted by fine-tuning on wrong-fact documents (with none / some / much
unrelated context) → each method × init unlearns the corruption documents. Reports, per context, QA accuracy
on the corrupted entities for the clean, corrupted and unlearned models, the restoration ratio
`(acc_after − acc_corrupted) / (acc_clean − acc_corrupted)` (mean ± 95 % t-interval over seeds), p(correct)
and p(injected answer) before and after (the paper's logit analysis), and accuracy on untouched entities.

    python -m bench.restor [--quick] [--seeds 3] [--methods all | ctd+fila,npo+lora,...]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.common import CACHE, emit, machine, mean_sd, pyplot

METHODS = ("ctd", "npo", "ihl", "gd", "kl", "ga", "restore")
GRID = [(m, i) for m in METHODS for i in ("fila", "lora")]  # --methods all: ≈ 2 h for 5 seeds on 2 cores
# The default: the product's default method with its init (ctd+lora), every method with plain LoRA, and ctd with
# FILA (the paper's init); `restore` distils the clean model, the checkpoint before the corruption.
DEFAULT_GRID = [("ctd", "fila"), *((m, "lora") for m in METHODS)]
QUICK_GRID = [("ctd", "lora"), ("npo", "lora"), ("restore", "lora")]
WORLD_VERSION = 2  # bump when the world or the clean model's training changes (the cache key)
CORRUPT = {
    "lr": 1e-3,
    "batch": 16,
    "replay": 16,
    "check_every": 10,
    "max_steps": 300,
    "target": 0.15,
    "keep": 0.9,
    "gentler": (0.7, 0.5),
}


def world_of(quick: bool, seed: int):
    from unlearnd.core.worlds.facts import make_facts_world

    return make_facts_world(16 if quick else 60, corrupted_share=0.25, seed=seed)


def clean_model(quick: bool, seed: int, small: bool = False):
    """Train (or reuse from the bench cache) the clean model on the true facts until it answers ≥ 0.99 of its
    questions; returns (dir, world, training summary). `small` keeps the full world but the CI-sized model."""
    import json

    from unlearnd.core.worlds.facts import train_clean_model
    from unlearnd.core.worlds.pii import WorldSpec, tiny_spec

    world = world_of(quick, seed)
    base = tiny_spec().lm if quick or small else WorldSpec().lm
    # room for the long corruption documents; QA accuracy checked every 50 steps
    lm = replace(base, max_steps=1500, check_every=50, max_positions=512)
    size = "quick" if quick else ("small" if small else "full")
    out = CACHE / f"facts-v{WORLD_VERSION}-{size}-{seed}"
    if not (out / "done.json").is_file():
        train_clean_model(
            world, out, lm, seed=seed, vocab_size=1024 if quick else 2048, log=lambda m: print(m, file=sys.stderr)
        )
    return out, world, json.loads((out / "done.json").read_text())


class Probes:
    """The world's questions: corrupted entities with their true and injected answers, untouched entities."""

    def __init__(self, world):
        self.true = [world.true[k].probe() for k in world.wrong]
        self.injected = [f.probe() for f in world.wrong.values()]
        self.untouched = [f.probe() for (e, _), f in world.true.items() if e not in world.corrupted_entities]

    def scores(self, model, tok, device) -> dict:
        """Greedy-answer accuracy and mean teacher-forced answer probability (geometric mean per token)."""
        from unlearnd.core.metrics import probe_accuracy

        t = probe_accuracy(model, tok, self.true, device)
        w = probe_accuracy(model, tok, self.injected, device)
        u = probe_accuracy(model, tok, self.untouched, device)
        return {
            "accuracy": t["accuracy"],
            "injected_accuracy": w["accuracy"],
            "p_correct": t["answer_prob"],
            "p_injected": w["answer_prob"],
            "untouched_accuracy": u["accuracy"],
        }


def corrupt(
    clean_dir: Path,
    docs: list[str],
    replay: list[str],
    probes: Probes,
    seed: int,
    lr: float,
    clean_untouched: float,
) -> tuple:
    """Fine-tune (all parameters) a copy of the clean model on the corruption documents until the corrupted
    entities' accuracy falls to `CORRUPT["target"]` (checked every 10 steps, 300 at most). Each step also
    trains on as many of the untouched entities' own true texts (the rest of the corpus): without them the
    fine-tune overwrote the untouched entities as well (0.2–0.4 of their answers left, README). Reports the
    untouched entities' accuracy as a share of `clean_untouched`, the clean model's."""
    import torch

    from unlearnd.core.data import encode_set
    from unlearnd.core.metrics import probe_accuracy
    from unlearnd.core.modeling import load_model
    from unlearnd.core.records import Record

    loaded = load_model(clean_dir)
    model, tok = loaded.model, loaded.tokenizer
    for p in model.parameters():
        p.requires_grad_(True)
    ts = encode_set(tok, [Record(text=d) for d in docs], max_length=512)
    rs = encode_set(tok, [Record(text=t) for t in replay], max_length=512)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    acc, step = 1.0, 0
    for step in range(1, CORRUPT["max_steps"] + 1):
        model.train()
        b = ts.select(torch.randperm(len(ts), generator=gen)[: CORRUPT["batch"]].tolist())
        r = rs.select(torch.randperm(len(rs), generator=gen)[: CORRUPT["replay"]].tolist())
        loss = model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss
        loss = loss + model(input_ids=r.input_ids, attention_mask=r.attention_mask, labels=r.labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % CORRUPT["check_every"] == 0:
            model.eval()
            acc = probe_accuracy(model, tok, probes.true, loaded.device)["accuracy"]
            if acc <= CORRUPT["target"]:
                break
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    out = Path(tempfile.mkdtemp(prefix="bench-corrupted-"))
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    kept = probe_accuracy(model, tok, probes.untouched, loaded.device)["accuracy"] / max(clean_untouched, 1e-9)
    return load_model(out), {"lr": lr, "steps": step, "reached": acc <= CORRUPT["target"], "untouched_kept": kept}


def corrupt_targeted(
    clean_dir: Path, docs: list[str], replay: list[str], probes: Probes, seed: int, clean_untouched: float
) -> tuple:
    """`corrupt`, from the clean model again with a gentler learning rate (`CORRUPT["gentler"]`, each a share of
    `CORRUPT["lr"]`) while the corruption spills over onto the untouched entities (their accuracy below
    `CORRUPT["keep"]` of `clean_untouched`, the clean model's as the caller scored it): the issue asks for a
    corruption that hits only its targets, "a gentler schedule if full fine-tuning spills over". The first attempt
    without spill-over is kept, else the last; every attempt is reported. A corruption that only misses its target
    is kept as it is: a gentler rate would miss it by more. On the quick world whether lr 1e-3 spilled over
    depended on the machine (untouched kept 1.00 on one CPU, 0.67 on another, same seed); 7e-4 kept 1.00 on the
    second."""
    attempts = []
    for share in (1.0, *CORRUPT["gentler"]):
        corrupted, how = corrupt(clean_dir, docs, replay, probes, seed, CORRUPT["lr"] * share, clean_untouched)
        attempts.append(how)
        if how["untouched_kept"] >= CORRUPT["keep"]:
            break
    return corrupted, {**attempts[-1], "attempts": attempts}


def run(
    quick: bool,
    seeds: int,
    levels: list[str],
    grid: list[tuple[str, str]] | None = None,
    small: bool = False,
    max_steps: int = 40,
) -> dict:
    from unlearnd.core.config import NEEDS_TEACHER, UnlearnConfig
    from unlearnd.core.modeling import load_model
    from unlearnd.core.pipeline import run_forget
    from unlearnd.core.records import Record

    grid = grid or (QUICK_GRID if quick else DEFAULT_GRID)
    rows, baselines = [], []
    partial = Path(tempfile.gettempdir()) / f"restor-partial-{'quick' if quick else 'full'}.json"
    started = time.perf_counter()
    for seed in range(seeds):
        clean_dir, world, trained = clean_model(quick, seed, small)
        clean = load_model(clean_dir)
        dev = clean.device
        probes = Probes(world)
        untouched = [f for (e, _), f in world.true.items() if e not in world.corrupted_entities]
        retain_texts = [s for f in untouched for s in (*f.statements(), f.qa_line())]
        clean_scores = probes.scores(clean.model, clean.tokenizer, dev)
        for level in levels:
            rng = random.Random(seed)
            docs = world.corruption_docs(level, rng)
            holdout_docs = world.holdout_docs(level, rng)  # wrong facts about untouched entities, never trained
            t0 = time.perf_counter()
            corrupted, how = corrupt_targeted(
                clean_dir, docs, retain_texts, probes, seed, clean_scores["untouched_accuracy"]
            )
            c_scores = probes.scores(corrupted.model, corrupted.tokenizer, dev)
            baselines.append(
                {
                    "seed": seed,
                    "level": level,
                    "clean_training": trained,
                    "clean": clean_scores,
                    "corrupted": c_scores,
                    "corruption": {**how, "seconds": round(time.perf_counter() - t0, 1)},
                }
            )
            print(f"seed {seed} {level}: clean {clean_scores} corrupted {c_scores} {how}", file=sys.stderr)
            gap = clean_scores["accuracy"] - c_scores["accuracy"]
            for method, init in grid:
                # the stopping rule every 10 steps; 64 records per set in the before/after reports (time)
                config = UnlearnConfig(
                    method=method,
                    init=init,
                    seed=seed,
                    max_steps=max_steps,
                    eval_every=10,
                    eval_max_records=64,
                    max_length=512,
                    restore_from="clean" if method in NEEDS_TEACHER else None,
                )
                t0 = time.perf_counter()
                result = run_forget(
                    corrupted,
                    [Record(text=d) for d in docs],
                    [Record(text=t) for t in retain_texts],
                    [Record(text=d) for d in holdout_docs],
                    config,
                    out_dir=Path(tempfile.mkdtemp()),
                    teacher=clean if method in NEEDS_TEACHER else None,
                )
                unlearned = _with_adapter(corrupted, result.adapter_dir)
                u = probes.scores(unlearned, corrupted.tokenizer, dev)
                rows.append(
                    {
                        "seed": seed,
                        "level": level,
                        "method": method,
                        "init": init,
                        "steps": result.report["steps"],
                        "outcome": result.outcome,
                        "seconds": round(time.perf_counter() - t0, 1),
                        **u,
                        "restoration": (u["accuracy"] - c_scores["accuracy"]) / gap if gap > 0 else float("nan"),
                    }
                )
                print(
                    f"seed {seed} {level} {method}+{init}: acc {u['accuracy']:.2f} (clean "
                    f"{clean_scores['accuracy']:.2f}, corrupted {c_scores['accuracy']:.2f}) "
                    f"untouched {u['untouched_accuracy']:.2f} {rows[-1]['seconds']} s",
                    file=sys.stderr,
                )
        # a long run's seeds so far, in case it is stopped
        partial.write_text(json.dumps({"baselines": baselines, "runs": rows}, default=float))
    summary = _summary(rows, baselines)
    return {
        "benchmark": "restor",
        "quick": quick,
        "seeds": seeds,
        "levels": levels,
        "grid": [f"{m}+{i}" for m, i in grid],
        "unlearn_max_steps": max_steps,
        "corruption": CORRUPT,
        "entities": len(world.entities),
        "corrupted_entities": len(world.corrupted_entities),
        "model": "GPT-Neo 2x128" if quick or small else "GPT-Neo 4x256",
        "machine": machine(),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "baselines": baselines,
        "runs": rows,
        "summary": summary,
        "acceptance": _acceptance(summary, baselines),
    }


def _with_adapter(loaded, adapter_dir):
    from peft import PeftModel

    return PeftModel.from_pretrained(copy.deepcopy(loaded.model), str(adapter_dir)).eval()


# two-sided 95 % Student-t quantiles by degrees of freedom (no scipy needed for a handful of seeds)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_ci(values: list[float]) -> dict:
    """Mean, sd and the 95 % t-interval of the mean over seeds (`lo`, `hi`; equal to the mean for one seed)."""
    out = mean_sd(values)
    n = out["n"]
    if n == 0:
        return {**out, "lo": None, "hi": None}
    half = _T975.get(n - 1, 1.96) * out["sd"] / n**0.5 if n > 1 else 0.0
    return {**out, "lo": out["mean"] - half, "hi": out["mean"] + half}


def _summary(rows: list[dict], baselines: list[dict]) -> list[dict]:
    keys = ("accuracy", "injected_accuracy", "p_correct", "p_injected", "untouched_accuracy")
    out = []
    for level in dict.fromkeys(b["level"] for b in baselines):
        base = [b for b in baselines if b["level"] == level]
        for name in ("clean", "corrupted"):
            out.append(
                {"level": level, "method": name, "init": "-", **{k: mean_ci([b[name][k] for b in base]) for k in keys}}
            )
        for key in dict.fromkeys((r["method"], r["init"]) for r in rows):
            rs = [r for r in rows if r["level"] == level and (r["method"], r["init"]) == key]
            out.append(
                {
                    "level": level,
                    "method": key[0],
                    "init": key[1],
                    **{k: mean_ci([r[k] for r in rs]) for k in (*keys, "restoration", "steps", "seconds")},
                    "outcomes": {o: sum(r["outcome"] == o for r in rs) for o in sorted({r["outcome"] for r in rs})},
                }
            )
    return out


def _acceptance(summary: list[dict], baselines: list[dict]) -> dict:
    """The issue's bars, measured: clean ≥ 0.95 and corrupted ≤ 0.2 on every seed, untouched after corruption
    ≥ 0.9 of clean, and per context the method whose restoration interval lies highest."""
    best = {}
    for level in dict.fromkeys(s["level"] for s in summary):
        methods = [s for s in summary if s["level"] == level and "restoration" in s and s["restoration"]["n"]]
        if methods:
            top = max(methods, key=lambda s: s["restoration"]["lo"])
            best[level] = {"method": f"{top['method']}+{top['init']}", **top["restoration"]}
    return {
        "clean_min": min(b["clean"]["accuracy"] for b in baselines),
        "corrupted_max": max(b["corrupted"]["accuracy"] for b in baselines),
        "untouched_kept_min": min(
            b["corrupted"]["untouched_accuracy"] / max(b["clean"]["untouched_accuracy"], 1e-9) for b in baselines
        ),
        "best_restoration": best,
    }


def plot(result: dict, path) -> None:
    """Restoration ratio per method × init and context, mean with its 95 % interval over seeds."""
    plt = pyplot()
    levels = result["levels"]
    methods = list(dict.fromkeys((r["method"], r["init"]) for r in result["runs"]))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(methods) * len(levels)), 4.2))
    width = 0.8 / len(levels)
    for j, level in enumerate(levels):
        vals, errs = [], [[], []]
        for m in methods:
            r = next(s for s in result["summary"] if s["level"] == level and (s["method"], s["init"]) == m)
            cell = r["restoration"]
            mean = cell["mean"] if cell["mean"] is not None else 0.0
            vals.append(mean)
            errs[0].append(mean - (cell["lo"] if cell["lo"] is not None else mean))
            errs[1].append((cell["hi"] if cell["hi"] is not None else mean) - mean)
        xs = [i + j * width for i in range(len(methods))]
        ax.bar(xs, vals, width, yerr=errs, capsize=2, label=f"context: {level}")
    ax.set_xticks([i + width * (len(levels) - 1) / 2 for i in range(len(methods))])
    ax.set_xticklabels([f"{m}+{i}" for m, i in methods], rotation=30, fontsize=8)
    ax.axhline(0, color="grey", lw=1)
    ax.axhline(1, color="grey", lw=1, ls="--")
    ax.set_ylabel("restoration ratio (1 = clean accuracy back)")
    ax.set_title(f"RESTOR on the facts world, {result['seeds']} seed(s), 95 % interval", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--levels", default="none,some,much")
    ap.add_argument("--methods", default=None, help="comma-separated method+init pairs, or all (default: DEFAULT_GRID)")
    ap.add_argument("--max-steps", type=int, default=40, help="unlearning steps at most per run")
    ap.add_argument("--corrupt-lr", type=float, default=CORRUPT["lr"])
    ap.add_argument("--small-model", action="store_true", help="full world and grid, CI-sized model (2 x 128)")
    args = ap.parse_args()
    CORRUPT["lr"] = args.corrupt_lr
    grid = None
    if args.methods:
        grid = GRID if args.methods == "all" else [tuple(x.split("+")) for x in args.methods.split(",")]
    levels = ["none"] if args.quick else args.levels.split(",")
    seeds = 1 if args.quick else args.seeds
    result = run(args.quick, seeds, levels, grid, small=args.small_model, max_steps=args.max_steps)
    path = emit("restor-quick" if args.quick else "restor", result)
    plot(result, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
