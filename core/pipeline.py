"""One forget request, end to end on a loaded model: measure before, adapt, unlearn, measure after, export.

Used by the CLI, the worker and the benchmarks alike. The model is handed back exactly as it came (LoRA
removed, touched weights restored), so a worker can keep one loaded base model across jobs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from core.config import UnlearnConfig
from core.data import TokenSet, concat, encode_set, tensorize
from core.device import use_precision
from core.errors import Cancelled, InvalidInput
from core.export import WEIGHTS_NAME, exported_rank, rank_of, read_adapter, write_adapter
from core.hashing import file_sha256
from core.lora import is_conv1d
from core.losses import OBJECTIVES
from core.metrics import SetScores, evaluate_set, mia, probe_accuracy
from core.modeling import LoadedModel, default_target_modules, find_targets
from core.records import Probe, Record
from core.unlearn import (
    Adapted,
    CancelCheck,
    LoopResult,
    Progress,
    StoppingRule,
    _never,
    _noop_progress,
    calibrate,
    init_fila,
    prepare,
    train,
)
from core.verdict import UNVERIFIED, forgetting, outcome, utility


@dataclass
class ForgetResult:
    report: dict
    adapter_dir: Path | None  # None for `full` (a whole model directory is written), and when nothing was unlearned
    reached: bool  # the forgetting conditions hold on the new version
    outcome: str  # core/verdict.py: forgotten | not_memorised | not_reached | model_damaged | unverified


@dataclass
class Sets:
    forget: TokenSet
    retain: TokenSet
    holdout: TokenSet  # the verdict's half of the holdout: never trained on, never anchored, never calibrated on
    retain_eval: TokenSet
    reference: TokenSet  # the holdout's calibration half: targets (ctd) and the anchor on never-seen data


def split_holdout(n: int, share: float, seed: int) -> tuple[list[int], list[int]]:
    """(calibration, verdict) indices of a holdout of n records, a seeded split (split conformal practice):
    the records that shape the targets and the anchor are never the ones the verdict tests against. Fewer
    than 4 records: all go to the verdict."""
    if n < 4:
        return [], list(range(n))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    k = min(n - 2, max(2, round(n * share)))
    return sorted(order[:k]), sorted(order[k:])


def encode_sets(tokenizer, forget, retain, holdout, config: UnlearnConfig) -> Sets:
    kw = {"prefix_fraction": config.prefix_fraction, "max_length": config.max_length}
    retain_ts = encode_set(tokenizer, retain, **kw)
    gen = torch.Generator().manual_seed(config.seed)
    eval_idx = torch.randperm(len(retain), generator=gen)[: config.eval_max_records].sort().values.tolist()
    holdout_ts = encode_set(tokenizer, holdout, **kw) if holdout else retain_ts.select([])
    calibration, verdict = split_holdout(len(holdout_ts), config.holdout_calibration_share, config.seed)
    return Sets(
        forget=encode_set(tokenizer, forget, **kw),
        retain=retain_ts,
        holdout=holdout_ts.select(verdict[: config.eval_max_records]),
        retain_eval=retain_ts.select(eval_idx),
        reference=holdout_ts.select(calibration),
    )


def measure(
    model, tokenizer, sets: Sets, probes: list[Probe], config: UnlearnConfig, device
) -> tuple[dict, dict[str, SetScores]]:
    """Before/after block of the report: every set's metrics (extraction from every attack prefix), the
    membership AUCs forget vs. holdout, probe accuracy; and the per-record scores the verdict needs."""
    scores = {
        name: evaluate_set(model, ts, device, el_n=config.el_n, attack_prefixes=config.attack_prefixes)
        for name, ts in (("forget", sets.forget), ("retain", sets.retain_eval), ("holdout", sets.holdout))
    }
    block = {name: s.metrics.to_dict() for name, s in scores.items()}
    block["mia"] = mia(scores["forget"], scores["holdout"]) if len(sets.holdout) else None
    block["probes"] = probe_accuracy(model, tokenizer, probes, device) if probes else None
    return block, scores


def measure_original(model, sets: Sets, config: UnlearnConfig, device) -> dict:
    """The original model's retain and holdout block (what "kept" compares with), for a job that starts from
    an earlier version: the base alone, every adapter disabled."""
    with model.disable_adapter():
        return {
            name: evaluate_set(
                model, ts, device, el_n=config.el_n, attack_prefixes=config.attack_prefixes
            ).metrics.to_dict()
            for name, ts in (("retain", sets.retain_eval), ("holdout", sets.holdout))
        }


def run_forget(
    loaded: LoadedModel,
    forget: list[Record],
    retain: list[Record],
    holdout: list[Record],
    config: UnlearnConfig,
    *,
    probes: list[Probe] = (),
    previous_adapter: Path | None = None,
    out_dir: Path,
    progress: Progress | None = None,
    should_cancel: CancelCheck | None = None,
) -> ForgetResult:
    """Unlearn `forget` from the model (plus the `previous_adapter` version it builds on) and write the new
    cumulative adapter to `out_dir`. Raises InvalidInput, Cancelled; the model is restored in every case."""
    if not forget:
        raise InvalidInput("the forget set is empty")
    config.validate()
    with use_precision(config.precision):
        return _forget(
            loaded,
            forget,
            retain,
            holdout,
            config,
            list(probes),
            previous_adapter,
            Path(out_dir),
            progress or _noop_progress,
            should_cancel or _never,
        )


def _forget(loaded, forget, retain, holdout, config, probes, previous_adapter, out_dir, progress, should_cancel):
    started = time.perf_counter()
    model, tokenizer, device = loaded.model, loaded.tokenizer, loaded.device

    prev_delta, prev_cfg = read_adapter(previous_adapter) if previous_adapter else ({}, None)
    target_modules = config.target_modules or (prev_cfg or {}).get("target_modules") or default_target_modules(model)
    target_modules = sorted(target_modules) if isinstance(target_modules, list | tuple | set) else [target_modules]
    modules = dict(model.named_modules())
    missing = set(prev_delta) - set(modules)
    if missing:
        raise InvalidInput(f"the previous adapter targets modules this model lacks: {sorted(missing)[:3]}")
    # The new version adapts every module the previous one did (its components live in the same LoRA).
    target_modules = sorted(set(target_modules) | {n.rsplit(".", 1)[-1] for n in prev_delta})
    targets = find_targets(model, target_modules)

    # LoRA inits never write the base weights (core/unlearn.py `prepare`); `full` trains all of them.
    snapshot = {n: p.detach().clone() for n, p in model.state_dict().items()} if config.init == "full" else None
    anchored = bool(prev_delta)  # a cumulative job keeps the previous version's forgetting (core/losses.py)
    bounds = config.bounds
    adapted: Adapted | None = None
    loop: LoopResult | None = None
    after = verdict_after = kept = adapter_info = adapter_dir = None
    try:
        sets = encode_sets(tokenizer, forget, retain, holdout, config)
        # The starting version: base + previous components, with a neutral trainable part.
        adapted = prepare(model, config, targets, device, anchored=anchored, previous=prev_delta)

        progress("evaluating", 0, 2, {"when": "before"})
        with adapted.merged() as starting:
            before, before_scores = measure(starting, tokenizer, sets, probes, config, device)
        has_holdout = len(sets.holdout) > 0
        verdict_before = forgetting(before_scores["forget"], before_scores["holdout"], bounds) if has_holdout else None
        original = (
            measure_original(adapted.model, sets, config, device) if prev_delta and config.init != "full" else before
        )
        if should_cancel():
            raise Cancelled("cancelled before unlearning")

        if verdict_before is None or not verdict_before.indistinguishable:
            rule = (
                StoppingRule(
                    sets.holdout,
                    bounds,
                    config.el_n,
                    config.attack_prefixes,
                    retain=sets.retain_eval,
                    original=original,
                )
                if has_holdout
                else None
            )
            objective = OBJECTIVES[config.method]
            # A pure anchor may also hold the model's behaviour on the calibration half of the holdout.
            anchor = (
                concat([sets.retain, sets.reference])
                if objective.anchors_reference and len(sets.reference)
                else sets.retain
            )
            if config.init == "fila":
                init_fila(adapted, config, sets.forget, anchor, device, progress, previous=prev_delta)
            plan = (
                calibrate(adapted.model, sets.forget, sets.reference, device, bounds.tail_p)
                if objective.needs_forget_targets
                else None
            )
            loop = train(
                adapted,
                sets.forget,
                anchor,
                config,
                device,
                rule=rule,
                progress=progress,
                should_cancel=should_cancel,
                anchored=anchored,
                targets=plan,
            )

            progress("evaluating", 1, 2, {"when": "after"})
            with adapted.merged() as trained:
                after, after_scores = measure(trained, tokenizer, sets, probes, config, device)
            verdict_after = forgetting(after_scores["forget"], after_scores["holdout"], bounds) if has_holdout else None
            kept = utility(original, after, bounds)

            progress("exporting", 0, 1, {})
            adapter_info, adapter_dir, check = _export(
                adapted, sets, config, loaded, target_modules, targets, rank_of(prev_delta), device, out_dir
            )
            progress("exporting", 1, 1, {})
    finally:
        if adapted is not None:
            model = adapted.release()
        _restore(model, snapshot)
    if adapter_dir is not None:
        # Base + exported adapter must reproduce the trained model (DESIGN §5); checked on every job.
        adapter_info["export_max_abs_diff"] = verify_export(model, adapter_dir, *check, device)

    result = outcome(verdict_before, verdict_after, kept) if has_holdout else UNVERIFIED
    report = {
        "method": config.method,
        "init": config.init,
        "config": config.to_dict(),
        "model": {"source": loaded.source, "fingerprint": loaded.fingerprint},
        "retain_term": _retain_term_name(config, anchored),
        "steps": loop.steps if loop else 0,
        "reached": bool(verdict_after and verdict_after.indistinguishable),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "trainable_params": loop.trainable_params if loop else 0,
        "verdict": {
            "outcome": result,
            "bounds": asdict(bounds),
            "before": verdict_before.to_dict() if verdict_before else None,
            "after": verdict_after.to_dict() if verdict_after else None,
            "utility": kept.to_dict() if kept else None,
        },
        "original": {k: original[k] for k in ("retain", "holdout")},
        "before": before,
        "after": after,
        "adapter": adapter_info,
        "history": loop.history if loop else [],
    }
    return ForgetResult(report, adapter_dir, report["reached"], result)


def _export(
    adapted: Adapted, sets: Sets, config: UnlearnConfig, loaded, target_modules, targets, parent_rank, device, out_dir
):
    """Write the new version: a whole model for `full`, else the cumulative LoRA (the previous version's
    components are in the factors), with the logits the export must reproduce."""
    if config.init == "full":
        adapted.model.save_pretrained(str(out_dir))
        loaded.tokenizer.save_pretrained(str(out_dir))
        return {"kind": "full_model"}, None, None
    check_batch = _check_batch(sets)
    trained_logits = _logits(adapted.model, check_batch, device)  # what the export must reproduce
    delta = adapted.delta()
    write_adapter(
        out_dir,
        delta,
        base_model=loaded.source,
        target_modules=target_modules,
        fan_in_fan_out=any(is_conv1d(m) for m in targets.values()),
        scale=config.scaling,
    )
    rank = exported_rank(delta)  # padded to a rank serving engines accept (core/serving.py)
    info = {
        "kind": "lora",
        "rank": rank,
        "alpha": config.scaling * rank,
        "target_modules": target_modules,
        "parent_rank": parent_rank,
        "weights_sha256": file_sha256(out_dir / WEIGHTS_NAME),
    }
    return info, out_dir, (check_batch, trained_logits)


def _retain_term_name(config: UnlearnConfig, anchored: bool) -> str | None:
    """What kept utility in this run (reports and audits say it, since cumulative jobs differ)."""
    objective = OBJECTIVES[config.method]
    if not objective.uses_retain:
        return None
    if objective.needs_ref_retain_logits or (anchored and config.previous_kl_weight > 0):
        return "kl_to_starting_model"
    return "nll" if config.retain_weight > 0 else None


@torch.no_grad()
def _restore(model, snapshot: dict[str, torch.Tensor] | None) -> None:
    """Hand the (cached) model back as it came: every weight back for `full`; LoRA inits wrote none."""
    if snapshot is not None:
        model.load_state_dict(snapshot)
        for p in model.parameters():
            p.requires_grad_(False)
    model.eval()


def _check_batch(sets: Sets) -> TokenSet:
    """A few forget and retain records: enough to catch any export mismatch, cheap on any model."""
    n_f, n_r = min(4, len(sets.forget)), min(4, len(sets.retain_eval))
    enc = [sets.forget.encoded[i] for i in range(n_f)] + [sets.retain_eval.encoded[i] for i in range(n_r)]
    return tensorize(enc, pad=0)  # padded positions are masked out of the comparison


@torch.inference_mode()
def _logits(model, ts: TokenSet, device) -> torch.Tensor:
    b = ts.to(device)
    return model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.float()


def verify_export(model, adapter_dir: Path, ts: TokenSet, expected: torch.Tensor, device) -> float:
    """Load the written adapter onto the restored base with peft and return the max |Δlogit| vs. the trained
    model on the real (unpadded) positions; the base is handed back unchanged."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    try:
        got = _logits(peft_model, ts, device)
    finally:
        peft_model.unload()
    mask = ts.attention_mask.to(device).bool()
    return float((got - expected).abs()[mask].max())
