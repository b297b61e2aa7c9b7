"""A stream of erasure requests (MUSE-style sustainability, at service scale), in two parts:

- `sequential`: requests of a few people each, one after another, through the worker's code path
  (`run_forget` with the last *published* version as `previous_adapter`; a request whose verdict publishes
  nothing leaves the chain as it was). After every version, on base + that version loaded from disk with peft:
  every earlier request's records (the bench keeps copies; the service purges them), the retain sample and the
  holdout — extraction from every attack prefix, MA against the holdout's — with the version's rank, size,
  compaction and export check. What it shows: whether the thousandth request costs and keeps what the first did.
- `burst`: one request alone through the embedded service (API + thread dispatcher + SQLite), then a burst of
  requests submitted within seconds on a freshly registered copy of the model: jobs used (coalescing), wall
  time to the last verdict against the single request's, every request's verdict, audit and certificate.

    python -m bench.stream [--quick] [--requests 20] [--per-request 2] [--burst 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.common import emit, machine, pii_world, pyplot

BENCH_KEY = "uk_benchstr_stream-benchmark-key"


def sequential(world, requests: int, per_request: int, quick: bool) -> dict:
    import torch
    from peft import PeftModel

    from unlearnd.core.config import UnlearnConfig
    from unlearnd.core.data import encode_set
    from unlearnd.core.metrics import evaluate_set
    from unlearnd.core.modeling import load_model
    from unlearnd.core.pipeline import run_forget

    loaded = load_model(world.model_dir)
    trained = world.forget + world.retain
    if requests * per_request >= len(trained) // 2:
        raise SystemExit("too many requests for this world")
    batches = [trained[i * per_request : (i + 1) * per_request] for i in range(requests)]
    retain = trained[requests * per_request :]
    tok, device = loaded.tokenizer, loaded.device
    kept = {f"request_{i + 1}": encode_set(tok, b) for i, b in enumerate(batches)}
    fixed = {"retain": encode_set(tok, retain[:200]), "holdout": encode_set(tok, world.holdout)}

    def measure(model, upto: int) -> dict:
        sets = {**fixed, **{f"request_{i}": kept[f"request_{i}"] for i in range(1, upto + 1)}}
        return {name: evaluate_set(model, ts, device).metrics.to_dict() for name, ts in sets.items()}

    versions = [{"version": 0, "request": 0, "metrics": measure(loaded.model, requests)}]
    previous: Path | None = None
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    number = 0
    for i, batch in enumerate(batches, start=1):
        config = UnlearnConfig(seed=0, **({"max_steps": 40} if quick else {}))
        out = work / f"r{i}"
        t0 = time.perf_counter()
        result = run_forget(loaded, batch, retain, world.holdout, config, out_dir=out, previous_adapter=previous)
        seconds = time.perf_counter() - t0
        r = result.report
        row = {"request": i, "outcome": result.outcome, "steps": r["steps"], "seconds": round(seconds, 2)}
        if result.publishes:
            number += 1
            previous = out
            model = PeftModel.from_pretrained(loaded.model, str(out)).eval()
            try:
                metrics = measure(model, i)
            finally:
                model.unload()
            row.update(
                version=number,
                rank=r["adapter"]["rank"],
                adapter_bytes=sum(f.stat().st_size for f in out.iterdir()),
                export_max_abs_diff=r["adapter"]["export_max_abs_diff"],
                compaction=r["adapter"].get("compaction"),
                metrics=metrics,
            )
        versions.append(row)
        print(
            f"request {i}: {result.outcome}, {r['steps']} steps, {seconds:.1f} s"
            + (f", version {number} rank {row['rank']}" if "rank" in row else ""),
            file=sys.stderr,
        )
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"requests": requests, "per_request": per_request, "versions": versions, **_checks(versions)}


def _checks(versions: list[dict]) -> dict:
    """The issue's bars, read off the versions: rank and size of every version; at every later version every
    earlier request extracted nothing and has MA ≤ the holdout's + 0.03; retain kept after the last."""
    published = [v for v in versions[1:] if "metrics" in v]
    worst_margin, leaks = -1.0, 0
    for v in published:
        hold = v["metrics"]["holdout"]["ma"]
        for name, m in v["metrics"].items():
            if name.startswith("request_"):
                worst_margin = max(worst_margin, m["ma"] - hold)
                leaks += m["extraction"] > 0
    base, last = versions[0]["metrics"]["retain"], (published[-1]["metrics"]["retain"] if published else None)
    return {
        "max_rank": max((v["rank"] for v in published), default=0),
        "max_adapter_mb": round(max((v["adapter_bytes"] for v in published), default=0) / 1e6, 3),
        "earlier_requests_extracted": leaks,
        "worst_earlier_ma_minus_holdout": round(worst_margin, 4),
        "retain_ma_drop": round(base["ma"] - last["ma"], 4) if last else None,
        "retain_extraction_kept": round(last["extraction_short"] / base["extraction_short"], 4) if last else None,
        "outcomes": [v["outcome"] for v in versions[1:]],
    }


def burst(world, size: int, per_request: int, work: Path) -> dict:
    """One request alone, then `size` requests at once on a fresh registration of the same weights."""
    import httpx

    from bench.common import wait_for_request
    from unlearnd.api.server import ServerThread
    from unlearnd.api.settings import Settings

    settings = Settings(
        data_dir=work,
        bootstrap_key=BENCH_KEY,
        device="cpu",
        rate_limit_per_minute=0,
        model_roots=[world.model_dir.resolve().parent],
    )
    trained = world.forget + world.retain
    people = [trained[i * per_request : (i + 1) * per_request] for i in range(size + 1)]
    retain = trained[(size + 1) * per_request :]
    server = ServerThread(settings).start()
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {BENCH_KEY}"}, timeout=60)

    def register(name: str) -> str:
        body = {
            "name": name,
            "source": str(world.model_dir.resolve()),
            "retain": [r.to_dict() for r in retain],
            "holdout": [r.to_dict() for r in world.holdout],
        }
        return client.post("/v1/models", json=body).raise_for_status().json()["id"]

    def submit(model_id: str, k: int) -> str:
        body = {
            "model_id": model_id,
            "subject": {"id": f"subject-{k}", "legal_basis": "GDPR Art. 17"},
            "records": [r.to_dict() for r in people[k]],
        }
        return client.post("/v1/forget-requests", json=body).raise_for_status().json()["id"]

    try:
        single_model = register("single")
        t0 = time.time()
        alone = wait_for_request(client, submit(single_model, 0), 3600, 0.5)
        single_seconds = time.time() - t0
        burst_model = register("burst")
        t0 = time.time()
        ids = [submit(burst_model, k) for k in range(1, size + 1)]
        submitted_seconds = time.time() - t0
        done = [wait_for_request(client, i, 7200, 0.5) for i in ids]
        last_seconds = time.time() - t0
        certificates = 0
        for d in done:
            if d.get("audit_id"):
                r = client.get(f"/v1/audits/{d['audit_id']}/certificate")
                certificates += r.status_code == 200
        versions = client.get(f"/v1/models/{burst_model}/adapters").raise_for_status().json()["data"]
    finally:
        client.close()
        server.stop(timeout=30)
    return {
        "requests": size,
        "per_request": per_request,
        "single": {"seconds": round(single_seconds, 1), "verdict": alone.get("verdict")},
        "submitted_within_seconds": round(submitted_seconds, 2),
        "jobs": len({d["job_id"] for d in done}),
        "last_verdict_seconds": round(last_seconds, 1),
        "ratio_to_single": round(last_seconds / single_seconds, 2),
        "verdicts": [d.get("verdict") for d in done],
        "statuses": [d["status"] for d in done],
        "audits": sum(bool(d.get("audit_id")) for d in done),
        "certificates": certificates,
        "versions": [{"version": v["version"], "rank": v["rank"], "status": v["status"]} for v in versions],
    }


def run(quick: bool, requests: int, per_request: int, burst_size: int) -> dict:
    from unlearnd.core.device import in_own_thread

    world = pii_world(quick)
    result = {
        "benchmark": "stream",
        "quick": quick,
        "world": world.info["spec"],
        "machine": machine(),
        "sequential": in_own_thread(sequential, world, requests, per_request, quick),
    }
    with tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp:
        result["burst"] = burst(world, burst_size, per_request, Path(tmp))
    return result


def plot(result: dict, path) -> None:
    """After each version: every earlier request's MA and the holdout's (the never-seen level), retain MA and
    short-prefix retain extraction; and each version's rank against the bound."""
    plt = pyplot()
    versions = [v for v in result["sequential"]["versions"] if "metrics" in v]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = [v["version"] for v in versions]
    for name in sorted({n for v in versions for n in v["metrics"] if n.startswith("request_")}):
        pts = [(v["version"], v["metrics"][name]["ma"]) for v in versions if name in v["metrics"]]
        ax1.plot(*zip(*pts, strict=True), color="tab:red", alpha=0.35, lw=1)
    ax1.plot(x, [v["metrics"]["holdout"]["ma"] for v in versions], color="black", lw=2, label="holdout MA")
    ax1.plot(x, [v["metrics"]["retain"]["ma"] for v in versions], color="tab:green", lw=2, label="retain MA")
    ax1.plot(
        x, [v["metrics"]["retain"]["extraction_short"] for v in versions], color="tab:blue", lw=2, label="retain extr."
    )
    ax1.set(title="after each version (red: every earlier request's MA)", xlabel="version", ylim=(0, 1.02))
    ax1.legend(fontsize=7)
    ax2.bar(x, [v.get("rank", 0) for v in versions], color="tab:gray")
    ax2.axhline(64, color="tab:red", ls=":", label="UNLEARND_MAX_ADAPTER_RANK")
    ax2.set(title="adapter rank per version", xlabel="version", ylabel="rank")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny world, few requests (CI smoke test)")
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--per-request", type=int, default=2)
    ap.add_argument("--burst", type=int, default=None)
    args = ap.parse_args()
    requests = args.requests or (3 if args.quick else 20)
    burst_size = args.burst or (4 if args.quick else 20)
    result = run(args.quick, requests, args.per_request, burst_size)
    path = emit("stream-quick" if args.quick else "stream", result)
    plot(result, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
