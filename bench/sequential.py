"""MUSE-style sustainability: k forget requests in a row on one model, through the code path the worker uses
(`run_forget` with the previous version as `previous_adapter`, cumulative LoRA versions). After each version,
every earlier forget set, the retain set and the holdout set are measured on base + that version loaded
from disk with peft; adapter rank and size are reported, with the export check of each version.

    python -m bench.sequential [--quick] [--requests 5] [--per-request 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.common import emit, machine, pii_world, pyplot


def run(quick: bool, requests: int, per_request: int, method: str, init: str) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from core.config import UnlearnConfig
    from core.data import encode_set
    from core.metrics import evaluate_set
    from core.modeling import load_model
    from core.pipeline import run_forget

    world = pii_world(quick)
    loaded = load_model(world.model_dir)
    trained = world.forget + world.retain
    if requests * per_request >= len(trained) // 2:
        raise SystemExit("too many requests for this world")
    batches = [trained[i * per_request : (i + 1) * per_request] for i in range(requests)]
    retain = trained[requests * per_request :]
    tok, device = loaded.tokenizer, loaded.device
    sets = {f"request_{i + 1}": encode_set(tok, b) for i, b in enumerate(batches)}
    sets["retain"] = encode_set(tok, retain[:200])
    sets["holdout"] = encode_set(tok, world.holdout)

    def measure(model) -> dict:
        return {name: evaluate_set(model, ts, device).metrics.to_dict() for name, ts in sets.items()}

    steps = [{"version": 0, "metrics": measure(loaded.model)}]
    previous: Path | None = None
    work = Path(tempfile.mkdtemp(prefix="bench-seq-"))
    for i, batch in enumerate(batches, start=1):
        config = UnlearnConfig(method=method, init=init, max_steps=100)
        out = work / f"v{i}"
        r = run_forget(loaded, batch, retain, world.holdout, config, out_dir=out, previous_adapter=previous).report
        base = AutoModelForCausalLM.from_pretrained(str(world.model_dir), attn_implementation="eager").eval()
        model = PeftModel.from_pretrained(base, str(out)).eval()
        size = sum(f.stat().st_size for f in out.iterdir())
        steps.append(
            {
                "version": i,
                "steps": r["steps"],
                "reached": r["reached"],
                "rank": r["adapter"]["rank"],
                "adapter_bytes": size,
                "export_max_abs_diff": r["adapter"]["export_max_abs_diff"],
                "metrics": measure(model),
            }
        )
        print(f"v{i}: rank {r['adapter']['rank']} steps {r['steps']} reached {r['reached']}", file=sys.stderr)
        previous = out
        del model, base
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {
        "benchmark": "sequential",
        "quick": quick,
        "method": method,
        "init": init,
        "requests": requests,
        "per_request": per_request,
        "machine": machine(),
        "versions": steps,
    }


def plot(result: dict, path) -> None:
    plt = pyplot()
    versions = result["versions"]
    x = [v["version"] for v in versions]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [n for n in versions[0]["metrics"] if n.startswith("request_")] + ["retain", "holdout"]
    for name in names:
        ax1.plot(x, [v["metrics"][name]["extraction"] for v in versions], marker="o", label=name)
        ax2.plot(x, [v["metrics"][name]["ma"] for v in versions], marker="o", label=name)
    ax1.set(title="exact extraction after each version", xlabel="adapter version", ylabel="extraction")
    ax2.set(title="memorisation accuracy after each version", xlabel="adapter version", ylabel="MA")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--per-request", type=int, default=4)
    ap.add_argument("--method", default="ihl")
    ap.add_argument("--init", default="fila")
    args = ap.parse_args()
    requests, per = (2, 2) if args.quick else (args.requests, args.per_request)
    result = run(args.quick, requests, per, args.method, args.init)
    path = emit("sequential-quick" if args.quick else "sequential", result)
    plot(result, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
