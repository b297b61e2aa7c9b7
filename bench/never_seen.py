"""How the verdict judges data the model never saw: its false-alarm rate, by group size.

The verdict (core/verdict.py) certifies a forget set as "indistinguishable from never-seen data". Its calibration
question is the converse: a group of records the model *never* saw — fresh people of the world's distribution,
in none of its files — compared with the holdout exactly as a forget request's records are after unlearning:
how often does each condition hold? A condition that genuine never-seen groups fail often is not a test of
"never-seen-like"; it asks for more (for a small group, that its mean percentile sit at the holdout's median).

For each group size m, `--groups` random groups of m fresh people (of `--fresh`) are judged against the holdout
with the service's default bounds, on the original model: the share that passes the whole forgetting verdict and
the share failing each condition; and the same for the group judged as one request of a coalesced job (the
per-request conditions, core/verdict.py `per_request`). The U test's own false-alarm rate should be near α;
the AUC band's is what this measures.

    python -m bench.never_seen [--quick] [--fresh 200] [--groups 2000] [--sizes 1 2 4 10 30]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections import Counter

from bench.common import emit, machine, pii_world
from bench.forgetting import fresh_people

MA_SLACK = 0.03  # the stream issue's bar: an earlier request's MA at most the holdout's + this


def run(quick: bool, n_fresh: int, n_groups: int, sizes: list[int], seed: int = 0) -> dict:
    import torch

    from unlearnd.core.config import UnlearnConfig
    from unlearnd.core.data import encode_set
    from unlearnd.core.metrics import evaluate_set
    from unlearnd.core.modeling import load_model
    from unlearnd.core.verdict import forgetting

    world = pii_world(quick)
    loaded = load_model(world.model_dir)
    config = UnlearnConfig()
    bounds = config.bounds
    device = torch.device("cpu")
    fresh = fresh_people(world, n_fresh)

    def scores(records):
        ts = encode_set(loaded.tokenizer, records, max_length=config.max_length)
        return evaluate_set(
            loaded.model, ts, device, el_n=config.el_n, attack_prefixes=tuple(config.attack_prefix_tokens)
        )

    never, holdout = scores(fresh), scores(world.holdout)
    rng = random.Random(seed)
    rows = []
    for m in sizes:
        if m > len(fresh):
            continue
        passed, failed, passed_req, failed_req = 0, Counter(), 0, Counter()
        ma_excess = []
        for _ in range(n_groups):
            group = never.subset(rng.sample(range(len(fresh)), m))
            ma_excess.append(group.metrics.ma - holdout.metrics.ma)
            verdict = forgetting(group, holdout, bounds)
            passed += verdict.indistinguishable
            failed.update(verdict.failed)
            # The same group as one request of a coalesced job (core/verdict.py `per_request`).
            as_request = forgetting(group, holdout, bounds, per_request=True)
            passed_req += as_request.indistinguishable
            failed_req.update(as_request.failed)
        rows.append(
            {
                "group_size": m,
                "groups": n_groups,
                "pass_rate": passed / n_groups,
                "fail_rate": {name: failed[name] / n_groups for name in sorted(failed)},
                "per_request_pass_rate": passed_req / n_groups,
                "per_request_fail_rate": {name: failed_req[name] / n_groups for name in sorted(failed_req)},
                # bench/stream's bar for an earlier request (MA ≤ holdout MA + 0.03): how never-seen groups fare
                "ma_minus_holdout": {
                    f"p{q}": float(statistics.quantiles(ma_excess, n=100)[q - 1]) for q in (5, 50, 90, 95)
                },
                "share_ma_above_holdout_plus_0.03": sum(x > MA_SLACK for x in ma_excess) / n_groups,
            }
        )
        print(
            f"m={m}: never-seen groups pass {passed / n_groups:.3f} (as one request of a job: "
            f"{passed_req / n_groups:.3f})",
            file=sys.stderr,
        )
    return {
        "benchmark": "never_seen",
        "quick": quick,
        "world": world.info["spec"],
        "machine": machine(),
        "fresh_people": len(fresh),
        "holdout": len(world.holdout),
        "bounds": {"alpha": bounds.alpha, "auc_tolerance": bounds.auc_tolerance, "tail_p": bounds.tail_p},
        "results": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny world, few groups (CI smoke test)")
    ap.add_argument("--fresh", type=int, default=None, help="never-seen people generated (default 200; quick 20)")
    ap.add_argument("--groups", type=int, default=None, help="random groups per size (default 2000; quick 50)")
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    args = ap.parse_args()
    result = run(
        args.quick,
        args.fresh or (20 if args.quick else 200),
        args.groups or (50 if args.quick else 2000),
        args.sizes or ([1, 2, 4] if args.quick else [1, 2, 4, 10, 30]),
    )
    emit("never_seen-quick" if args.quick else "never_seen", result)


if __name__ == "__main__":
    main()
