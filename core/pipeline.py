"""One forget request, end to end on a loaded model: measure before, adapt, unlearn, measure after, export.

Used by the CLI, the worker and the benchmarks alike. The model is handed back exactly as it came (LoRA
removed, touched weights restored), so a worker can keep one loaded base model across jobs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from unlearnd.core.compaction import compact
from unlearnd.core.config import UnlearnConfig
from unlearnd.core.data import TokenSet, concat, encode_set, tensorize
from unlearnd.core.device import use_precision
from unlearnd.core.errors import Cancelled, InvalidInput
from unlearnd.core.export import WEIGHTS_NAME, Delta, exported_rank, rank_of, read_adapter, write_adapter
from unlearnd.core.hashing import file_sha256
from unlearnd.core.lora import is_conv1d
from unlearnd.core.losses import OBJECTIVES
from unlearnd.core.metrics import SetScores, evaluate_set, mia, probe_accuracy
from unlearnd.core.modeling import LoadedModel, context_length, default_target_modules, find_targets
from unlearnd.core.records import Probe, Record
from unlearnd.core.self_samples import sample_rows
from unlearnd.core.unlearn import (
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
from unlearnd.core.verdict import PUBLISHED, UNVERIFIED, judge, outcome, utility


@dataclass
class ForgetResult:
    report: dict
    adapter_dir: Path | None  # None for `full` (a whole model directory is written), and when nothing was unlearned
    reached: bool  # the forgetting conditions hold on the new version
    outcome: str  # core/verdict.py: forgotten | not_memorised | not_reached | model_damaged | unverified
    outcomes: list[str] = field(default_factory=list)  # per request (group of records), in `groups` order

    @property
    def publishes(self) -> bool:
        """Some request's outcome makes the new version worth serving."""
        return self.adapter_dir is not None and any(o in PUBLISHED for o in (self.outcomes or [self.outcome]))


@dataclass
class Sets:
    forget: TokenSet
    retain: TokenSet
    holdout: TokenSet  # never trained on: the verdict's reference (ctd also calibrates on it and anchors it)
    retain_eval: TokenSet


def encode_sets(tokenizer, forget, retain, holdout, config: UnlearnConfig, context: int | None = None) -> Sets:
    """Every set tokenised once. Rows never exceed the model's `context`: a longer record is windowed."""
    max_length = min(config.max_length, context) if context else config.max_length
    kw = {"prefix_fraction": config.prefix_fraction, "max_length": max_length}
    retain_ts = encode_set(tokenizer, retain, **kw)
    gen = torch.Generator().manual_seed(config.seed)
    eval_idx = torch.randperm(len(retain), generator=gen)[: config.eval_max_records].sort().values.tolist()
    holdout_ts = encode_set(tokenizer, holdout[: config.eval_max_records], **kw) if holdout else retain_ts.select([])
    return Sets(
        forget=encode_set(tokenizer, forget, **kw),
        retain=retain_ts,
        holdout=holdout_ts,
        retain_eval=retain_ts.select_records(eval_idx),
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
    return report_block(model, tokenizer, scores, sets, probes, device), scores


def report_block(model, tokenizer, scores: dict[str, SetScores], sets: Sets, probes: list[Probe], device) -> dict:
    """The report's block from the three sets' evaluations (`measure`'s, or a passing stopping check's)."""
    block = {name: scores[name].metrics.to_dict() for name in ("forget", "retain", "holdout")}
    block["mia"] = mia(scores["forget"], scores["holdout"]) if len(sets.holdout) else None
    block["probes"] = probe_accuracy(model, tokenizer, probes, device) if probes else None
    return block


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
    groups: list[list[int]] | None = None,
    teacher: LoadedModel | None = None,
) -> ForgetResult:
    """Unlearn `forget` from the model (plus the `previous_adapter` version it builds on) and write the new
    cumulative adapter to `out_dir`. Raises InvalidInput, Cancelled; the model is restored in every case.

    `groups`: indices into `forget` of each request a (coalesced) job serves; each gets its own verdict
    (`report["verdict"]["requests"]`, `ForgetResult.outcomes`). Default: one request of every record.
    `teacher`: for the `restore` method, the checkpoint `config.restore_from` names, loaded on the same device
    with the same tokenizer (only read, never trained)."""
    if not forget:
        raise InvalidInput("the forget set is empty")
    groups = groups or [list(range(len(forget)))]
    if sorted(i for g in groups for i in g) != list(range(len(forget))) or any(not g for g in groups):
        raise InvalidInput("groups must partition the forget records into non-empty requests")
    config.validate()
    if OBJECTIVES[config.method].needs_teacher:
        _check_teacher(loaded, teacher, config.restore_from)
    else:
        teacher = None  # only `restore` reads it
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
            groups,
            teacher.model if teacher is not None else None,
        )


def _check_teacher(loaded: LoadedModel, teacher: LoadedModel | None, name: str | None) -> None:
    """The checkpoint a `restore` job distils must read the same tokens the same way: the same tokenizer
    vocabulary and output size (its logits are compared position by position with the model's)."""
    if teacher is None:
        raise InvalidInput(f"restore_from {name!r}: the checkpoint to restore from was not loaded")
    if teacher.model is loaded.model:
        raise InvalidInput(f"restore_from {name!r} is the model itself, not a checkpoint from before the documents")
    ours, theirs = loaded.model.get_output_embeddings(), teacher.model.get_output_embeddings()
    if ours is None or theirs is None or ours.weight.shape != theirs.weight.shape:
        raise InvalidInput(f"restore_from {name!r} has another vocabulary size than the model it would restore")
    if loaded.tokenizer.get_vocab() != teacher.tokenizer.get_vocab():
        raise InvalidInput(f"restore_from {name!r} has another tokenizer than the model it would restore")


def _forget(
    loaded,
    forget,
    retain,
    holdout,
    config,
    probes,
    previous_adapter,
    out_dir,
    progress,
    should_cancel,
    groups,
    teacher=None,
):
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
    parent_rank = rank_of(prev_delta)
    bounds = config.bounds
    adapted: Adapted | None = None
    loop: LoopResult | None = None
    after = after_scores = verdict_after = kept = adapter_info = adapter_dir = compaction = None
    try:
        sets = encode_sets(tokenizer, forget, retain, holdout, config, context_length(model))
        if config.init != "full" and parent_rank + config.job_rank > config.max_adapter_rank:
            progress("compacting", 0, 1, {"rank": parent_rank, "to": config.max_adapter_rank - config.job_rank})
            model, prev_delta, compaction = _compact_start(model, prev_delta, config, targets, sets, device)
        # The starting version: base + previous components, with a neutral trainable part.
        adapted = prepare(model, config, targets, device, anchored=anchored, previous=prev_delta)

        progress("evaluating", 0, 2, {"when": "before"})
        with adapted.merged() as starting:
            before, before_scores = measure(starting, tokenizer, sets, probes, config, device)
        has_holdout = len(sets.holdout) > 0
        verdict_before = (
            # Before any step, the question is whether the model knows the records at all (one-sided).
            judge(before_scores["forget"], before_scores["holdout"], bounds, groups, one_sided=True)
            if has_holdout
            else None
        )
        original = (
            measure_original(adapted.model, sets, config, device) if prev_delta and config.init != "full" else before
        )
        if should_cancel():
            raise Cancelled("cancelled before unlearning")

        if verdict_before is None or not verdict_before.indistinguishable:
            # Only the requests whose records the model knows are unlearned: one it never knew (its own
            # before-verdict says so) would only be pushed past the never-seen level.
            forget_ts, train_groups = _to_unlearn(sets.forget, groups, verdict_before)
            rule = (
                StoppingRule(
                    sets.holdout,
                    bounds,
                    config.el_n,
                    config.attack_prefixes,
                    retain=sets.retain_eval,
                    original=original,
                    groups=train_groups,
                )
                if has_holdout
                else None
            )
            objective = OBJECTIVES[config.method]
            # A pure anchor also holds the model's behaviour on never-seen records (KL only): what the verdict
            # compares the forget set with stays where it was instead of drifting with the unlearning.
            reference = sets.holdout if objective.anchors_reference and len(sets.holdout) else None
            samples = None
            if reference is not None and config.anchor_samples:
                # ... and on what the original model writes unprompted: its knowledge beyond the registered sets.
                with adapted.original() as original_model:
                    samples = sample_rows(
                        original_model,
                        tokenizer,
                        config.anchor_samples,
                        _sample_length(config, model, [sets.forget, sets.retain, reference]),
                        config.seed,
                        device,
                    )
            if config.init == "fila":
                fisher_retain = concat([sets.retain, reference]) if reference is not None else sets.retain
                init_fila(adapted, config, forget_ts, fisher_retain, device, progress, previous=prev_delta)
            # The before-report scored the starting model on these very sets (FILA's init leaves it unchanged):
            # calibration and the step-0 check read those scores instead of two more passes each.
            start = (before_scores["forget"], before_scores["holdout"]) if forget_ts is sets.forget else None
            plan = (
                calibrate(adapted.model, forget_ts, sets.holdout, device, bounds.tail_p, train_groups, start)
                if objective.needs_forget_targets
                else None
            )
            loop = train(
                adapted,
                forget_ts,
                sets.retain,
                config,
                device,
                rule=rule,
                progress=progress,
                should_cancel=should_cancel,
                anchored=anchored,
                calibration=plan,
                reference_ts=reference,
                samples_ts=samples,
                teacher=teacher,
                start_scores=start,
            )
            progress("evaluating", 1, 2, {"when": "after"})
            if loop.final is not None and forget_ts is sets.forget:
                # The loop stopped on a check that evaluated exactly what `measure` would (the same sets,
                # prefixes and model): the after-report is that evaluation, not a second one.
                after_scores = loop.final
                after = report_block(adapted.model, tokenizer, after_scores, sets, probes, device)
            else:
                with adapted.merged() as trained:
                    after, after_scores = measure(trained, tokenizer, sets, probes, config, device)
            verdict_after = (
                judge(after_scores["forget"], after_scores["holdout"], bounds, groups) if has_holdout else None
            )
            kept = utility(original, after, bounds)

            progress("exporting", 0, 1, {})
            adapter_info, adapter_dir, check = _export(
                adapted, sets, config, loaded, target_modules, targets, parent_rank, device, out_dir
            )
            if compaction is not None:
                adapter_info["compaction"] = compaction.to_dict()
            progress("exporting", 1, 1, {})
    finally:
        if adapted is not None:
            model = adapted.release()
        _restore(model, snapshot)
    if adapter_dir is not None:
        # Base + exported adapter must reproduce the trained model (DESIGN §5); checked on every job.
        adapter_info["export_max_abs_diff"] = verify_export(model, adapter_dir, *check, device)

    result = outcome(verdict_before, verdict_after, kept) if has_holdout else UNVERIFIED
    per_request = []
    for k in range(len(groups)):
        b = verdict_before.requests[k] if verdict_before else None
        a = verdict_after.requests[k] if verdict_after else None
        per_request.append(
            {
                "outcome": outcome(b, a, kept) if has_holdout else UNVERIFIED,
                "records": len(groups[k]),
                "before": b.to_dict() if b else None,
                "after": a.to_dict() if a else None,
                "scores": _score_lists(before_scores, after_scores, groups[k]),
            }
        )
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
            "before": verdict_before.whole.to_dict() if verdict_before else None,
            "after": verdict_after.whole.to_dict() if verdict_after else None,
            "requests": per_request,
            "utility": kept.to_dict() if kept else None,
        },
        "original": {k: original[k] for k in ("retain", "holdout")},
        "before": before,
        "after": after,
        "adapter": adapter_info,
        "history": loop.history if loop else [],
        "scores": _score_lists(before_scores, after_scores),
    }
    return ForgetResult(report, adapter_dir, report["reached"], result, [r["outcome"] for r in per_request])


def _sample_length(config: UnlearnConfig, model, rows: list[TokenSet]) -> int:
    """Tokens per self-sample: `anchor_sample_tokens`, but no longer than the longest row it trains beside nor
    than the model's context. A step pads its forget and anchor rows to the longest of them, so a sample longer
    than every record pads the whole batch: on the demo world, 48-token samples padded every step's 36–39-token
    rows to 48 (a step 0.57 s → 0.52 s, README "Performance")."""
    longest = max((len(e.ids) for ts in rows for e in ts.encoded), default=config.anchor_sample_tokens)
    return max(2, min(config.anchor_sample_tokens, context_length(model) or config.anchor_sample_tokens, longest))


def _to_unlearn(forget: TokenSet, groups: list[list[int]], before) -> tuple[TokenSet, list[list[int]]]:
    """The forget rows of the requests the model knows (all of them without a before-verdict) and their groups
    renumbered over those records (the order `evaluate_set` scores them in)."""
    if before is None:
        return forget, groups
    active = [g for g, b in zip(groups, before.requests, strict=True) if not b.indistinguishable]
    if len(active) == len(groups):
        return forget, groups
    records = sorted(i for g in active for i in g)
    position = {r: j for j, r in enumerate(records)}
    return forget.select_records(records), [[position[i] for i in g] for g in active]


def _score_lists(before: dict[str, SetScores], after: dict[str, SetScores] | None, records=None) -> dict:
    """The per-record membership scores of the forget set (`records` of it) and the holdout, before and
    after: numbers only, never text, for the evidence report's distributions (loss, zlib, Min-k%)."""

    def lists(scores: dict[str, SetScores]) -> dict:
        out = {}
        for name in ("forget", "holdout"):
            s = scores[name]
            pick = records if name == "forget" and records is not None else range(len(s.loss))
            out[name] = {k: [round(float(getattr(s, k)[i]), 5) for i in pick] for k in ("loss", "zlib", "min_k")}
        return out

    return {"before": lists(before), "after": lists(after) if after is not None else None}


def _export(
    adapted: Adapted,
    sets: Sets,
    config: UnlearnConfig,
    loaded,
    target_modules,
    targets,
    parent_rank,
    device,
    out_dir,
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


def _compact_start(model, previous: Delta, config: UnlearnConfig, targets, sets: Sets, device):
    """The starting version compacted to `max_adapter_rank − job_rank` (core/compaction.py: truncated SVD, then
    a repair distilling the previous version on the retain, holdout and forget rows), so that the version this
    job trains is within the bound as trained. Compacting *before* the loop, not after it, means the verdict is
    reached on the very model that is published: the truncation of a trained version cut the new request's
    own low-energy unlearning directions and failed its verdict (bench/stream at c9d12f4: 5 of the 11 requests
    after the first compaction). Returns the base model (peft's layers removed), the compacted delta and the
    report."""
    starting = prepare(model, config, targets, device, previous=previous)
    try:
        compacted, report = compact(
            starting.model,
            previous,
            config.max_adapter_rank - config.job_rank,
            {"retain": sets.retain_eval, "holdout": sets.holdout, "forget": sets.forget},
            device,
            steps=config.compaction_steps,
            seed=config.seed,
        )
    finally:
        model = starting.release()
    return model, compacted, report


def _retain_term_name(config: UnlearnConfig, anchored: bool) -> str | None:
    """What kept utility in this run (reports and audits say it, since cumulative jobs differ)."""
    objective = OBJECTIVES[config.method]
    if not objective.uses_retain:
        return None
    if objective.anchors_reference:
        return "kl_to_original_model"
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
