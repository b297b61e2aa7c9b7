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
    before = result["before"]
    lines = [
        f"Before unlearning: retain MA {before['retain']['ma']:.3f}, retain extraction "
        f"{before['retain']['extraction']:.2f}; holdout (never seen) MA {before['holdout']['ma']:.3f}, "
        f"extraction {before['holdout']['extraction']:.2f}.",
        "",
        "| forget | method + init | reached | steps | seconds | forget MA | forget extr. | retain MA | retain extr. "
        "| retain ppl | MIA AUC (loss) | trainable |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        lines.append(
            f"| {r['forget_size']} | {r['method']}+{r['init']} | {r['reached']:.0%} | {_ms(r['steps'], 0)} | "
            f"{_ms(r['seconds'], 1)} | {_ms(r['forget_ma'], 3)} | {_ms(r['forget_extraction'])} | "
            f"{_ms(r['retain_ma'], 3)} | {_ms(r['retain_extraction'])} | {_ms(r['retain_perplexity'])} | "
            f"{_ms(r['mia_loss_auc'])} | {r['trainable_params']:,} |"
        )
    return "\n".join(lines)


def restor(result: dict) -> str:
    lines = [
        "| context | model | QA accuracy (corrupted entities) | restoration ratio | untouched accuracy "
        "| p(correct) | p(injected) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in result["summary"]:
        name = s["method"] if s["init"] == "-" else f"{s['method']}+{s['init']}"
        lines.append(
            f"| {s['level']} | {name} | {_ms(s['accuracy'])} | {_ms(s.get('restoration'))} | "
            f"{_ms(s.get('untouched_accuracy'))} | {_ms(s.get('p_correct'), 3)} | {_ms(s.get('p_injected'), 3)} |"
        )
    return "\n".join(lines)


def sequential(result: dict) -> str:
    versions = result["versions"]
    reqs = [n for n in versions[0]["metrics"] if n.startswith("request_")]
    head = "| version | rank | adapter KB | steps | " + " | ".join(f"{r} extr." for r in reqs)
    head += " | retain MA | retain extr. | holdout MA | export max abs diff |"
    lines = [head, "|" + "---|" * (8 + len(reqs))]
    for v in versions:
        m = v["metrics"]
        cells = [
            str(v["version"]),
            str(v.get("rank", "–")),
            f"{v.get('adapter_bytes', 0) / 1024:.0f}",
            str(v.get("steps", "–")),
        ]
        cells += [f"{m[r]['extraction']:.2f}" for r in reqs]
        cells += [f"{m['retain']['ma']:.3f}", f"{m['retain']['extraction']:.2f}", f"{m['holdout']['ma']:.3f}"]
        cells.append(f"{v['export_max_abs_diff']:.1e}" if "export_max_abs_diff" in v else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


RENDER = {"forgetting": forgetting, "restor": restor, "sequential": sequential}


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results")
    for name, render in RENDER.items():
        path = folder / f"{name}.json"
        if path.is_file():
            result = json.loads(path.read_text())
            print(f"### {name} (commit {result['machine'].get('commit', '?')})\n\n{render(result)}\n")


if __name__ == "__main__":
    main()
