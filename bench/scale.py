"""Job time, peak memory and phase shares against model size and forget-set size (issue 12, point 3).

Models are random-initialised Llama configs built directly on the device (no download, no checkpoint on disk):
≈ 10M, 50M and 125M parameters on a CPU, and the shapes of Llama 3.2 1B and Llama 3.1 8B on a GPU. Random
weights memorise nothing, so the job runs a fixed number of steps (no holdout, no stopping rule): what is
measured is cost, at the size of a real model. Each row is one `core.pipeline.run_forget` of IHL + FILA with
the service's defaults (rank 8, 8 forget + 16 retain rows a step, Fisher on ≤ 128 records a set), on synthetic
PII records of ≈ 55 tokens: forget sets of 1, 10 and 100 records, 128 retain records.

Phases are timed from the job's own progress callbacks: setup (tokenise, wrap), evaluate before, Fisher + FILA
(both Fisher passes, the SVDs, the factors), unlearning steps, evaluate after, export (write the adapter and
check that base + adapter reproduces the trained model). Peak memory is the CUDA allocator's peak on a GPU and
the process's resident-set peak (sampled every 10 ms) on a CPU. The step's efficiency is its FLOPs, counted as
`bench/speed.py` does (`4·N_mm·tokens + 6·N_lora·tokens + 3·attention`), over the matmul peak of the same run.

    python -m bench.scale [--sizes 10M,50M,125M] [--forget 1,10,100] [--steps 20] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import ROOT, machine

# name → (hidden, layers, heads, kv_heads, intermediate, vocab, tied embeddings)
SIZES: dict[str, tuple[int, int, int, int, int, int, bool]] = {
    "dry": (64, 2, 4, 2, 128, 2048, False),  # the GPU check's CPU dry run: seconds
    "10M": (256, 6, 4, 2, 1024, 8192, False),
    "50M": (512, 10, 8, 4, 1536, 16384, False),
    "125M": (768, 12, 12, 4, 2048, 32000, False),
    "1B": (2048, 16, 32, 8, 8192, 128256, True),  # Llama 3.2 1B
    "8B": (4096, 32, 32, 8, 14336, 128256, False),  # Llama 3.1 8B
}
SHAPE_FIELDS = ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "tied")
CPU_SIZES = ("10M", "50M", "125M")
GPU_SIZES = ("1B", "8B")
FORGET_SIZES = (1, 10, 100)
RETAIN_RECORDS = 128
STEPS = 20  # about what a 10-record request takes to its stopping rule on the demo world (README "Results")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Corpus:
    tokenizer: object
    records: list  # core.records.Record: forget rows first, then retain


def corpus(n_records: int, seed: int = 0) -> Corpus:
    """Synthetic PII records (a person's record and one generic sentence) and a byte-level BPE tokenizer of
    2,048 tokens trained on them: a model's larger vocabulary costs its LM head and softmax all the same."""
    from unlearnd.core.records import Record
    from unlearnd.core.worlds.pii import make_generic, make_people
    from unlearnd.core.worlds.tokenizer import train_tokenizer

    rng = random.Random(seed)
    people = make_people(n_records, rng)
    texts = [f"{p.render()} {make_generic(1, rng)[0]}" for p in people]
    return Corpus(train_tokenizer(texts, 2048), [Record(text=t) for t in texts])


def llama_config(size: str, tokenizer):
    from unlearnd.core.worlds.families import Shape, family_config

    hidden, layers, heads, kv_heads, intermediate, vocab, tied = SIZES[size]
    shape = Shape(hidden, layers, heads, kv_heads, intermediate, max_positions=4096, tie_embeddings=tied)
    return family_config(
        "llama", vocab, shape, bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id
    )


def build(size: str, tokenizer, device):
    """A random-initialised Llama of `size` on `device` (bf16 weights on CUDA, fp32 on CPU), as a LoadedModel
    the pipeline takes like any loaded checkpoint."""
    import torch

    from unlearnd.core.modeling import LoadedModel, weights_dtype
    from unlearnd.core.worlds.families import parameter_count, random_model

    model = random_model(llama_config(size, tokenizer), dtype=weights_dtype(device), device=device)
    for p in model.parameters():
        p.requires_grad_(False)
    loaded = LoadedModel(model, tokenizer, f"random-llama-{size}", "random", torch.device(device))
    return loaded, parameter_count(model)


def matmul_peak(device, repeats: int = 10) -> dict:
    """The matmul peak of this device now: bf16 8192³ on a GPU (the step's dtype there), fp32 1024³ on a
    CPU; the median of timed runs after a warm-up."""
    import torch

    cuda = device.type == "cuda"
    n, dtype = (8192, torch.bfloat16) if cuda else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b)
    samples = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        samples.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "gflops_median": round(statistics.median(samples), 1)}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory while a block runs: the CUDA allocator's peak, or the CPU process's resident set sampled
    every 10 ms (the process's own `ru_maxrss` never goes down, so it cannot tell one row from the last)."""

    def __init__(self, device) -> None:
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            with open("/proc/self/statm") as f:
                self.peak_bytes = max(self.peak_bytes, int(f.read().split()[1]) * page)
            self._stop.wait(0.01)

    def __exit__(self, *exc) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()


def resident_bytes(device) -> int:
    """Memory held now: allocated on the GPU, resident set on a CPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class StepCounter:
    """Tokens of every training forward (a pre-hook on the input embeddings; peft calls the base model's
    forward directly, so the embeddings are where a step's batch shows) and when each step ended."""

    def __init__(self, model) -> None:
        self.shapes: dict[int, list[tuple[int, int]]] = {}
        self.stamps: dict[int, float] = {}
        self._handle = model.get_input_embeddings().register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        if module.training:
            self.shapes.setdefault(len(self.stamps), []).append(tuple(args[0].shape))

    def close(self) -> None:
        self._handle.remove()


def step_flops(model, n_lora: int, shapes: list[tuple[int, int]]) -> float:
    """`4·N_mm·tokens + 6·N_lora·tokens + 3·attention` for one step's forwards (see bench/speed.py)."""
    from unlearnd.core.modeling import is_target_layer

    cfg = model.config
    n_mm = sum(m.weight.numel() for name, m in model.named_modules() if is_target_layer(m) and "lora_" not in name)
    tokens = sum(b * t for b, t in shapes)
    attention = cfg.num_hidden_layers * 4 * cfg.hidden_size * sum(b * t * t for b, t in shapes)
    return 4 * n_mm * tokens + 6 * n_lora * tokens + 3 * attention


def job_row(loaded, corpus_: Corpus, n_forget: int, steps: int, peak_gflops: float, out_dir: Path) -> dict:
    """One forget request on the loaded model: seconds per phase, peak memory, the step's efficiency."""
    from unlearnd.core.config import UnlearnConfig
    from unlearnd.core.pipeline import run_forget

    device = loaded.device
    forget = corpus_.records[:n_forget]
    retain = corpus_.records[n_forget : n_forget + RETAIN_RECORDS]
    config = UnlearnConfig(method="ihl", init="fila", max_steps=steps, eval_every=4, seed=0)
    marks: list[tuple[str, int, float]] = []
    lora_params: list[int] = []

    def progress(phase: str, step: int, total: int, metrics: dict) -> None:
        now = time.perf_counter()
        if phase == "unlearning":
            counter.stamps[step] = now
            if not lora_params:
                lora_params.append(sum(p.numel() for n, p in loaded.model.named_parameters() if "lora_" in n))
        if not marks or marks[-1][0] != phase or (phase == "evaluating" and marks[-1][1] != step):
            marks.append((phase, step, now))

    counter = StepCounter(loaded.model)
    before_bytes = resident_bytes(device)
    _sync(device)
    started = time.perf_counter()
    try:
        with PeakMemory(device) as peak:
            result = run_forget(loaded, forget, retain, [], config, out_dir=out_dir, progress=progress)
        _sync(device)
    finally:
        counter.close()
    ended = time.perf_counter()
    phases = _phases(marks, started, ended)
    total = ended - started
    step_rows = []
    for s in range(2, result.report["steps"] + 1):  # step 1 warms up; checked steps include a check
        if s % config.eval_every and s - 1 in counter.stamps and s in counter.stamps and counter.shapes.get(s):
            dt = counter.stamps[s] - counter.stamps[s - 1]
            step_rows.append((dt, step_flops(loaded.model, lora_params[0] if lora_params else 0, counter.shapes[s])))
    step_seconds = statistics.median(dt for dt, _ in step_rows) if step_rows else None
    gflops = statistics.median(f / dt / 1e9 for dt, f in step_rows) if step_rows else None
    return {
        "forget_records": n_forget,
        "retain_records": len(retain),
        "steps": result.report["steps"],
        "job_seconds": round(total, 2),
        "phases_seconds": {k: round(v, 2) for k, v in phases.items()},
        "phase_shares": {k: round(v / total, 3) for k, v in phases.items()},
        "fisher_fila_share": round(phases.get("fisher_fila", 0.0) / total, 3),
        "peak_memory_gb": round(peak.peak_bytes / 1e9, 2),
        "memory_before_job_gb": round(before_bytes / 1e9, 2),
        "step_seconds_median": round(step_seconds, 4) if step_seconds else None,
        "tokens_per_step_median": statistics.median(sum(b * t for b, t in counter.shapes[s]) for s in counter.shapes)
        if counter.shapes
        else None,
        "step_gflops": round(gflops, 1) if gflops else None,
        "step_efficiency": round(gflops / peak_gflops, 3) if gflops else None,
        "export_max_abs_diff": result.report["adapter"]["export_max_abs_diff"],
        "adapter_rank": result.report["adapter"]["rank"],
    }


def _phases(marks: list[tuple[str, int, float]], started: float, ended: float) -> dict[str, float]:
    """Seconds per phase from the progress marks (evaluating 0 → fisher → unlearning → evaluating 1 →
    exporting); whatever precedes the first mark is setup."""
    names = {("evaluating", 0): "evaluate_before", ("evaluating", 1): "evaluate_after"}
    out = {"setup": marks[0][2] - started if marks else ended - started}
    for i, (phase, step, t) in enumerate(marks):
        nxt = marks[i + 1][2] if i + 1 < len(marks) else ended
        key = names.get((phase, step), {"fisher": "fisher_fila"}.get(phase, phase))
        out[key] = out.get(key, 0.0) + nxt - t
    return out


def efficiency_row(loaded, corpus_: Corpus, batch: int, steps: int, peak_gflops: float) -> dict:
    """The unlearning step alone at `batch` forget + `batch` retain rows (plain LoRA: the step has FILA's
    shape), without stopping checks: what the loop reaches when its batch is large enough to fill the GPU."""
    from unlearnd.core.config import UnlearnConfig
    from unlearnd.core.data import encode_set
    from unlearnd.core.modeling import default_target_modules, find_targets
    from unlearnd.core.unlearn import prepare, train

    device = loaded.device
    model = loaded.model
    fts = encode_set(loaded.tokenizer, corpus_.records[: 2 * batch])
    rts = encode_set(loaded.tokenizer, corpus_.records[2 * batch : 2 * batch + RETAIN_RECORDS])
    config = UnlearnConfig(
        method="ihl", init="lora", batch_size=batch, retain_batch_size=batch, max_steps=steps, eval_every=100_000
    )
    counter = StepCounter(model)
    targets = find_targets(model, default_target_modules(model))
    adapted = prepare(model, config, targets, device)
    n_lora = sum(p.numel() for p in adapted.trainable_parameters())
    try:

        def progress(phase, step, total, metrics):
            _sync(device)
            counter.stamps[step] = time.perf_counter()

        train(adapted, fts, rts, config, device, rule=None, progress=progress)
    finally:
        counter.close()
        adapted.release()
    rows = [
        (counter.stamps[s] - counter.stamps[s - 1], step_flops(model, n_lora, counter.shapes[s]))
        for s in range(2, steps)  # the first step warms up, the last one is a check
        if s in counter.stamps and s - 1 in counter.stamps and counter.shapes.get(s)
    ]
    gflops = statistics.median(f / dt / 1e9 for dt, f in rows)
    return {
        "batch_forget": batch,
        "batch_retain": batch,
        "tokens_per_step": sum(b * t for b, t in counter.shapes[2]),
        "step_seconds_median": round(statistics.median(dt for dt, _ in rows), 4),
        "step_gflops": round(gflops, 1),
        "efficiency": round(gflops / peak_gflops, 3),
        "steps_timed": len(rows),
    }


def run_size(
    size: str,
    corpus_: Corpus,
    device,
    forget_sizes: tuple[int, ...],
    steps: int,
    peak_gflops: float,
    *,
    deadline: float | None = None,
    on_update=None,
    efficiency: tuple[int, int] | None = None,
) -> dict:
    """Every forget-set size on one model of `size`. `efficiency=(batch, steps)` first times the loop alone
    (`efficiency_row`), before the job rows, so a time-boxed run never loses it. `on_update(entry)` runs once
    the model is built and after every row (callers rewrite their JSON); rows that would start after
    `deadline` (a perf_counter time) are skipped and say so."""
    import torch

    t0 = time.perf_counter()
    loaded, params = build(size, corpus_.tokenizer, device)
    _sync(device)
    entry = {
        "size": size,
        "params": params,
        "shape": dict(zip(SHAPE_FIELDS, SIZES[size], strict=True)),
        "weights_dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
        "init_seconds": round(time.perf_counter() - t0, 2),
        "weights_gb": round(resident_bytes(device) / 1e9, 2) if device.type == "cuda" else None,
        "rows": [],
    }
    log(f"{size}: {params / 1e6:.1f}M parameters on {device} in {entry['init_seconds']} s")
    if on_update is not None:
        on_update(entry)
    if efficiency is not None:
        entry["efficiency"] = efficiency_row(loaded, corpus_, *efficiency, peak_gflops)
        eff = entry["efficiency"]["efficiency"]
        log(f"{size} loop alone at {efficiency[0]}+{efficiency[0]} rows: efficiency {eff}")
        if on_update is not None:
            on_update(entry)
    for n in forget_sizes:
        if deadline is not None and time.perf_counter() > deadline:
            entry["rows"].append({"forget_records": n, "skipped": "time box"})
            log(f"{size} forget {n}: skipped (time box)")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            row = job_row(loaded, corpus_, n, steps, peak_gflops, Path(tmp) / "adapter")
        entry["rows"].append(row)
        log(
            f"{size} forget {n}: {row['job_seconds']} s, Fisher+FILA {row['fisher_fila_share']:.0%}, "
            f"peak {row['peak_memory_gb']} GB, step efficiency {row['step_efficiency']}"
        )
        if on_update is not None:
            on_update(entry)
    del loaded
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(CPU_SIZES))
    parser.add_argument("--forget", default=",".join(map(str, FORGET_SIZES)))
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--device", default=None, help="default: cuda if present, else cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    import torch

    from unlearnd.core.device import pick_device

    device = pick_device(args.device)
    forget_sizes = tuple(int(x) for x in args.forget.split(","))
    corp = corpus(max(forget_sizes) + RETAIN_RECORDS)
    peak = matmul_peak(device)
    log(f"matmul peak {peak['gflops_median']} GFLOP/s ({peak['dtype']}) on {device}")
    result = {"machine": machine(), "device": _device_name(device), "peak": peak, "steps": args.steps, "sizes": []}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"scale-{device.type}.json"
    for size in args.sizes.split(","):
        entry = run_size(size, corp, device, forget_sizes, args.steps, peak["gflops_median"])
        result["sizes"].append(entry)
        path.write_text(json.dumps(result, indent=2))
    log(f"wrote {path}")
    del torch


def _device_name(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"


if __name__ == "__main__":
    main()
