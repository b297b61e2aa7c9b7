"""RESTOR-style restoration on the synthetic facts world: clean model → corrupted by wrong-fact documents (with
none / some / much unrelated context) → each method × init unlearns the corruption documents. Reports QA
accuracy on corrupted entities for clean, corrupted and unlearned models, the restoration ratio
`(acc_unlearned − acc_corrupted) / (acc_clean − acc_corrupted)`, accuracy on untouched entities, and the
probability the model gives the correct vs. the injected answer.

    python -m bench.restor [--quick] [--seeds 3]
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from bench.common import CACHE, emit, machine, mean_sd, pyplot

GRID = [(m, i) for m in ("ihl", "ga", "gd", "kl", "npo") for i in ("fila", "lora")]
QUICK_GRID = [("ihl", "fila"), ("ga", "lora")]


def clean_model(quick: bool, seed: int, small: bool = False):
    """Train (or reuse) the clean model on the true facts; returns (dir, world). `small` keeps the full
    world's entities but the CI-sized model (2 × 128)."""
    import json

    import torch

    from core.worlds.facts import make_facts_world
    from core.worlds.lm import gpt_neo, train_memorise
    from core.worlds.pii import WorldSpec, tiny_spec
    from core.worlds.tokenizer import train_tokenizer

    n = 16 if quick else 60
    world = make_facts_world(n, corrupted_share=0.25, seed=seed)
    # the PII world's model presets, with room for the long corruption documents
    base = tiny_spec().lm if quick or small else WorldSpec().lm
    spec = replace(
        base, max_steps=800 if quick or small else 1500, check_every=40 if quick or small else 100, max_positions=512
    )
    size = "quick" if quick else ("small" if small else "full")
    out = CACHE / f"facts-{size}-{seed}"
    if (out / "done.json").is_file():
        return out, world
    texts = world.clean_texts()
    corruption_vocab = [d for lvl in ("none", "much") for d in world.corruption_docs(lvl, random.Random(0))]
    torch.manual_seed(seed)
    tok = train_tokenizer(texts + corruption_vocab, 1024 if quick else 2048)
    model = gpt_neo(tok, spec)
    qa = [f.qa_line() for f in world.true.values()]
    summary = train_memorise(model, tok, texts, qa, spec, seed=seed, log=lambda m: print(m, file=sys.stderr))
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    (out / "done.json").write_text(json.dumps(summary))
    return out, world


def qa_scores(model, tok, facts, other_facts, device) -> dict:
    """Accuracy of greedy answers, and mean teacher-forced answer probability for `facts` and `other_facts`
    (the same questions with the other answer: injected vs. correct)."""
    from core.metrics import probe_accuracy
    from core.records import Probe

    probes = [Probe(f.question(), f" {f.value}.") for f in facts]
    alt = [Probe(f.question(), f" {f.value}.") for f in other_facts]
    acc = probe_accuracy(model, tok, probes, device)
    alt_acc = probe_accuracy(model, tok, alt, device) if alt else {"answer_prob": float("nan")}
    return {"accuracy": acc["accuracy"], "p_answer": acc["answer_prob"], "p_other": alt_acc["answer_prob"]}


def corrupt(clean_dir: Path, docs: list[str], steps: int, seed: int):
    """Fine-tune the clean model on the corruption documents (a copy; the clean model stays on disk)."""
    import torch

    from core.data import encode_set
    from core.modeling import load_model
    from core.records import Record

    loaded = load_model(clean_dir)
    model = loaded.model
    for p in model.parameters():
        p.requires_grad_(True)
    ts = encode_set(loaded.tokenizer, [Record(text=d) for d in docs], max_length=512)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        b = ts.select(torch.randperm(len(ts), generator=gen)[:16].tolist())
        loss = model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    out = Path(tempfile.mkdtemp(prefix="bench-corrupted-"))
    model.save_pretrained(str(out))
    loaded.tokenizer.save_pretrained(str(out))
    return load_model(out)


def run(quick: bool, seeds: int, levels: list[str], corrupt_steps: int, small: bool = False) -> dict:
    from core.config import UnlearnConfig
    from core.modeling import load_model
    from core.pipeline import run_forget
    from core.records import Record

    rows, baselines = [], []
    for seed in range(seeds):
        clean_dir, world = clean_model(quick, seed, small)
        clean = load_model(clean_dir)
        dev = clean.device
        bad_true = [world.true[k] for k in world.wrong]
        bad_wrong = list(world.wrong.values())
        untouched = [f for (e, _), f in world.true.items() if e not in world.corrupted_entities]
        retain_texts = [s for f in untouched for s in (*f.statements(), f.qa_line())]
        clean_scores = qa_scores(clean.model, clean.tokenizer, bad_true, bad_wrong, dev)
        for level in levels:
            rng = random.Random(seed)
            docs = world.corruption_docs(level, rng)
            holdout_docs = world.holdout_docs(level, rng)
            corrupted = corrupt(clean_dir, docs, corrupt_steps, seed)
            c_scores = qa_scores(corrupted.model, corrupted.tokenizer, bad_true, bad_wrong, dev)
            c_untouched = qa_scores(corrupted.model, corrupted.tokenizer, untouched, [], dev)["accuracy"]
            baselines.append(
                {
                    "seed": seed,
                    "level": level,
                    "clean": clean_scores,
                    "corrupted": c_scores,
                    "corrupted_untouched_accuracy": c_untouched,
                }
            )
            for method, init in QUICK_GRID if quick else GRID:
                config = UnlearnConfig(method=method, init=init, seed=seed, max_steps=60, max_length=512)
                result = run_forget(
                    corrupted,
                    [Record(text=d) for d in docs],
                    [Record(text=t) for t in retain_texts],
                    [Record(text=d) for d in holdout_docs],
                    config,
                    out_dir=Path(tempfile.mkdtemp()),
                )
                unlearned = _with_adapter(corrupted, result.adapter_dir)
                u = qa_scores(unlearned, corrupted.tokenizer, bad_true, bad_wrong, dev)
                u_untouched = qa_scores(unlearned, corrupted.tokenizer, untouched, [], dev)["accuracy"]
                gap = clean_scores["accuracy"] - c_scores["accuracy"]
                rows.append(
                    {
                        "seed": seed,
                        "level": level,
                        "method": method,
                        "init": init,
                        "steps": result.report["steps"],
                        "reached": result.reached,
                        "accuracy": u["accuracy"],
                        "p_correct": u["p_answer"],
                        "p_injected": u["p_other"],
                        "untouched_accuracy": u_untouched,
                        "restoration": (u["accuracy"] - c_scores["accuracy"]) / gap if gap > 0 else float("nan"),
                    }
                )
                print(
                    f"seed {seed} {level} {method}+{init}: acc {u['accuracy']:.2f} (clean "
                    f"{clean_scores['accuracy']:.2f}, corrupted {c_scores['accuracy']:.2f})",
                    file=sys.stderr,
                )
    return {
        "benchmark": "restor",
        "quick": quick,
        "seeds": seeds,
        "levels": levels,
        "corrupt_steps": corrupt_steps,
        "machine": machine(),
        "baselines": baselines,
        "runs": rows,
        "summary": _summary(rows, baselines),
    }


def _with_adapter(loaded, adapter_dir):
    from peft import PeftModel

    return PeftModel.from_pretrained(copy.deepcopy(loaded.model), str(adapter_dir)).eval()


def _summary(rows: list[dict], baselines: list[dict]) -> list[dict]:
    out = []
    for level in dict.fromkeys(r["level"] for r in rows):
        base = [b for b in baselines if b["level"] == level]
        out.append(
            {
                "level": level,
                "method": "clean",
                "init": "-",
                "accuracy": mean_sd([b["clean"]["accuracy"] for b in base]),
            }
        )
        out.append(
            {
                "level": level,
                "method": "corrupted",
                "init": "-",
                "accuracy": mean_sd([b["corrupted"]["accuracy"] for b in base]),
                "untouched_accuracy": mean_sd([b["corrupted_untouched_accuracy"] for b in base]),
            }
        )
        for key in dict.fromkeys((r["method"], r["init"]) for r in rows):
            rs = [r for r in rows if r["level"] == level and (r["method"], r["init"]) == key]
            out.append(
                {
                    "level": level,
                    "method": key[0],
                    "init": key[1],
                    **{
                        m: mean_sd([r[m] for r in rs])
                        for m in ("accuracy", "restoration", "untouched_accuracy", "p_correct", "p_injected", "steps")
                    },
                }
            )
    return out


def plot(result: dict, path) -> None:
    plt = pyplot()
    levels = result["levels"]
    methods = [s for s in dict.fromkeys((r["method"], r["init"]) for r in result["runs"])]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(methods) * len(levels) / 2), 4.2))
    width = 0.8 / len(levels)
    for j, level in enumerate(levels):
        vals = []
        for m in methods:
            row = next(s for s in result["summary"] if s["level"] == level and (s["method"], s["init"]) == m)
            vals.append(row["restoration"]["mean"] or 0.0)
        ax.bar([i + j * width for i in range(len(methods))], vals, width, label=f"context: {level}")
    ax.set_xticks([i + width * (len(levels) - 1) / 2 for i in range(len(methods))])
    ax.set_xticklabels([f"{m}+{i}" for m, i in methods], rotation=30, fontsize=8)
    ax.axhline(0, color="grey", lw=1)
    ax.axhline(1, color="grey", lw=1, ls="--")
    ax.set_ylabel("restoration ratio (1 = clean accuracy back)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--corrupt-steps", type=int, default=60)
    ap.add_argument("--small-model", action="store_true", help="full world and grid, CI-sized model (2 x 128)")
    args = ap.parse_args()
    levels = ["none", "much"] if args.quick else ["none", "some", "much"]
    steps = 30 if args.quick else args.corrupt_steps
    result = run(args.quick, 1 if args.quick else args.seeds, levels, steps, small=args.small_model)
    path = emit("restor-quick" if args.quick else "restor", result)
    plot(result, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
