"""The unlearning loop: adapt the model (FILA, LoRA or full), optimise the chosen objective with AdamW, and
stop once the forget set is indistinguishable from the never-seen holdout (core/verdict.py).

Progress and cancellation come in as callables so the worker can report to its database and stop between
steps, without core knowing about either.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from unlearnd.core import lora
from unlearnd.core.calibration import Calibration, ForgetTargets, row_profiles, token_levels
from unlearnd.core.config import Bounds, UnlearnConfig
from unlearnd.core.data import IGNORE, TokenSet, concat, packs_well
from unlearnd.core.device import autocast
from unlearnd.core.errors import Cancelled, InvalidInput
from unlearnd.core.export import Component, Delta, rank_of, stacked
from unlearnd.core.fila import diagonal_fisher, fila_factors, relative_importance
from unlearnd.core.losses import OBJECTIVES, LossInputs, sequence_logprob, token_logprobs
from unlearnd.core.metrics import SetScores, evaluate_set, forward_logits
from unlearnd.core.verdict import Forgetting, Judgement, Utility, judge, scores_pass, utility

Progress = Callable[[str, int, int, dict], None]
CancelCheck = Callable[[], bool]


def _noop_progress(phase: str, step: int, total: int, metrics: dict) -> None:
    return None


def _never() -> bool:
    return False


@dataclass
class Check:
    """One evaluation of the stopping rule: the forgetting verdict, the forget scores it came from, and (once
    forgetting holds) whether the model was kept."""

    forgetting: Judgement
    forget: SetScores
    holdout: SetScores
    utility: Utility | None = None
    retain: SetScores | None = None  # scored once forgetting holds, for the utility half
    screened: bool = False  # judged against the last check's holdout scores: far from passing, not re-scored

    @property
    def passed(self) -> bool:
        return self.forgetting.indistinguishable and (self.utility is None or self.utility.kept)


@dataclass
class StoppingRule:
    """The verdict (core/verdict.py), checked on the current model: per-record membership scores of the forget
    set against the holdout, both re-scored now (the holdout moves with the model); only once those pass, the
    greedy decodes for EL_n and extraction from every attack prefix; only once forgetting holds, the utility
    half against the original model (`original`, a report block) on the retain sample. So a run that reaches
    "indistinguishable" while its retain term is still repairing the damage goes on until both hold."""

    holdout: TokenSet
    bounds: Bounds
    el_n: int = 10
    attack_prefixes: tuple[int, ...] = (4, 8)
    retain: TokenSet | None = None
    original: dict | None = None
    groups: list[list[int]] | None = None  # the forget records of each request the job serves
    # The screen: a check whose forget scores, against the last check's holdout scores, put some AUC more than
    # `screen_margin` above the band is failed without re-scoring the holdout (5/6 of a light check on the
    # demo: 50 holdout records, 10 forget). Only a check that may pass pays for the holdout; a passing verdict
    # is always judged on the holdout scored now. None: every check re-scores the holdout.
    screen_margin: float | None = 0.15
    last_holdout: SetScores | None = field(default=None, repr=False)

    def check(
        self,
        model: nn.Module,
        forget_ts: TokenSet,
        device: torch.device,
        scored: tuple[SetScores, SetScores] | None = None,
    ) -> Check:
        """`scored`: the forget and holdout scores of this very model, already computed (step 0: the job's
        before-report evaluated the starting model on the same sets), in place of the first two passes."""
        if scored is not None:
            f, h = scored
        else:
            f = evaluate_set(model, forget_ts, device, el_n=self.el_n, generate=False)
            if self.screen_margin is not None and self.last_holdout is not None:
                stale = judge(f, self.last_holdout, self.bounds)
                ceiling = 0.5 + self.bounds.auc_tolerance + self.screen_margin
                if max(t.auc for t in stale.whole.scores.values()) > ceiling:
                    return Check(stale, f, self.last_holdout, screened=True)
            h = evaluate_set(model, self.holdout, device, el_n=self.el_n, generate=False)
        self.last_holdout = h
        result = judge(f, h, self.bounds, self.groups)
        if not scores_pass(result):
            return Check(result, f, h)
        f = evaluate_set(model, forget_ts, device, el_n=self.el_n, attack_prefixes=self.attack_prefixes)
        # Every attack prefix costs nothing more (extraction comes from the forward pass): the same evaluation
        # as the after-report's, which a passing check stands in for (core/pipeline.py).
        h = evaluate_set(model, self.holdout, device, el_n=self.el_n, attack_prefixes=self.attack_prefixes)
        result = judge(f, h, self.bounds, self.groups)
        if not result.indistinguishable or self.retain is None or self.original is None or not len(self.retain):
            return Check(result, f, h)
        r = evaluate_set(model, self.retain, device, el_n=self.el_n, attack_prefixes=self.attack_prefixes)
        now = {"retain": r.metrics.to_dict(), "holdout": h.metrics.to_dict()}
        return Check(result, f, h, utility(self.original, now, self.bounds), r)


@dataclass
class Adapted:
    """The model under unlearning and what is needed to compute its reference outputs and export its delta."""

    model: nn.Module  # the module to train and evaluate (a PeftModel, or the base itself for `full`)
    init: str
    initial: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # LoRA factors at step 0
    reference_copy: nn.Module | None = None  # `full` only: a frozen original, when the objective needs it
    frozen_elements: int = 0  # gradient-masked LoRA rows: FILA's `A₀, −B₀` and the previous version (see `prepare`)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters()) - self.frozen_elements

    @contextlib.contextmanager
    def reference(self) -> Iterator[nn.Module]:
        """The starting model (this run's step 0): the step-0 LoRA factors swapped back in (they hold the
        previous version's frozen components), or the frozen copy for full fine-tuning. Costs no second copy
        of the base for LoRA inits."""
        if self.init == "full":
            yield self.reference_copy
        else:
            layers = lora.lora_layers(self.model)
            current = {
                n: tuple(t.to(layer.lora_A["default"].weight.device) for t in lora.get_factors(layer))
                for n, layer in layers.items()
            }
            try:
                for n, layer in layers.items():
                    lora.set_factors(layer, *self.initial[n])
                yield self.model
            finally:
                for n, layer in layers.items():
                    lora.set_factors(layer, *current[n])

    @contextlib.contextmanager
    def original(self) -> Iterator[nn.Module]:
        """The original model, whatever version this run starts from: the base with every adapter disabled
        (peft's `disable_adapter`), or the starting copy for full fine-tuning (which merged the previous
        version into it: the closest it keeps)."""
        if self.init == "full":
            yield self.reference_copy
            return
        with self.model.disable_adapter():
            yield self.model

    @contextlib.contextmanager
    def merged(self) -> Iterator[nn.Module]:
        """The model with LoRA folded into its weights, for inference only (the before- and after-reports): it
        runs at the base model's speed, without the adapter's extra matmuls per layer (≈ 15–20 % of an
        evaluation on the demo model). Only on fp32 weights, where the merge is exact to float rounding; the
        weights are copied back exactly on exit (not unmerged), so the cached base model never drifts."""
        layers = lora.lora_layers(self.model) if self.init != "full" else {}
        if not layers or any(layer.base_layer.weight.dtype != torch.float32 for layer in layers.values()):
            yield self.model
            return
        saved = {n: layer.base_layer.weight.detach().clone() for n, layer in layers.items()}
        self.model.merge_adapter()
        try:
            yield self.model
        finally:
            self.model.unmerge_adapter()
            with torch.no_grad():
                for n, layer in layers.items():
                    layer.base_layer.weight.copy_(saved[n])

    def delta(self) -> Delta:
        """The exported version as LoRA components (see core/export.py): the factors hold every part,
        trained `[A; ·]`, FILA's frozen `[A₀; ·]` with `−B₀`, and the previous version's frozen components,
        so this is exactly the trained model's change to the unmodified base."""
        out: Delta = {}
        for name, layer in lora.lora_layers(self.model).items():
            a, b = lora.get_factors(layer)
            out[name] = [Component(a, b, lora.scaling_of(layer))]
        return out

    def release(self) -> nn.Module:
        """Remove the LoRA layers (without merging) and hand back the base module."""
        if self.init == "full":
            return self.model
        return self.model.unload()


def adapt(
    model: nn.Module,
    config: UnlearnConfig,
    targets: dict[str, nn.Module],
    forget_ts: TokenSet,
    retain_ts: TokenSet,
    device: torch.device,
    progress: Progress = _noop_progress,
    *,
    anchored: bool = False,
    previous: Delta | None = None,
) -> Adapted:
    """`prepare` then, for FILA, `init_fila`: the model ready to train, equal to the starting version."""
    adapted = prepare(model, config, targets, device, anchored=anchored, previous=previous)
    if config.init == "fila":
        init_fila(adapted, config, forget_ts, retain_ts, device, progress, previous=previous)
    return adapted


def prepare(
    model: nn.Module,
    config: UnlearnConfig,
    targets: dict[str, nn.Module],
    device: torch.device,
    *,
    anchored: bool = False,
    previous: Delta | None = None,
) -> Adapted:
    """Wrap the model for the chosen init so that it computes the starting version exactly (the base plus
    the `previous` version's components) with a neutral trainable part.

    LoRA inits never write the base weights: one LoRA of rank `r` (trainable) + `r` (FILA's frozen `−B₀A₀`)
    + the previous version's rank, the frozen rows and columns gradient-masked. So the trained factors are the
    exported cumulative adapter in any precision (merging into bf16 weights put it 0.09–0.16 off in the
    logits), and the cached base needs no restoring. `full` merges `previous` into the weights it trains."""
    previous = previous or {}
    if config.init == "full":
        modules = dict(model.named_modules())
        for name, comps in previous.items():
            lora.add_to_weight(modules[name], sum(c.delta() for c in comps))
        needs_ref = OBJECTIVES[config.method].needs_ref_retain_logits or anchored
        ref = copy.deepcopy(model).eval() if needs_ref else None
        for p in model.parameters():
            p.requires_grad_(True)
        return Adapted(model, "full", reference_copy=ref)

    missing = set(previous) - set(targets)
    if missing:  # the pipeline targets every module the previous version adapts
        raise InvalidInput(f"the previous version adapts modules outside this job's targets: {sorted(missing)[:3]}")
    r = config.rank
    prev_rank = rank_of(previous)
    rank = r * (2 if config.init == "fila" else 1) + prev_rank
    fan_in_fan_out = any(lora.is_conv1d(m) for m in targets.values())
    target_names = sorted({n.rsplit(".", 1)[-1] for n in targets})
    peft_model = lora.wrap(model, rank, config.scaling * rank, target_names, fan_in_fan_out, config.seed)
    initial, frozen = {}, 0
    for name, layer in lora.lora_layers(peft_model).items():
        a, b = lora.get_factors(layer)  # peft's init: seeded random A, zero B (a neutral trainable part)
        a[r:], b[:, r:] = 0.0, 0.0
        if name in previous:
            a[rank - prev_rank :], b[:, rank - prev_rank :] = stacked(previous[name], config.scaling, prev_rank)
        lora.set_factors(layer, a, b)
        if rank > r:
            frozen += lora.freeze_rows_from(layer, r)
        initial[name] = (a.to(device), b.to(device))
    peft_model.train()
    return Adapted(peft_model, config.init, initial=initial, frozen_elements=frozen)


def init_fila(
    adapted: Adapted,
    config: UnlearnConfig,
    forget_ts: TokenSet,
    retain_ts: TokenSet,
    device: torch.device,
    progress: Progress = _noop_progress,
    *,
    previous: Delta | None = None,
) -> None:
    """FILA on a prepared model: the Fisher of the starting version (hooks on the base layers, the LoRA
    frozen), factors from the Fisher-weighted SVD of its effective weights `W + ΔW_previous`, written into the
    trainable rows `(A, B) = (A₀, B₀)` and the frozen rows `(A₀, −B₀)`: the model is unchanged."""
    previous = previous or {}
    layers = lora.lora_layers(adapted.model)
    bases = {name: layer.base_layer for name, layer in layers.items()}

    def effective_weight(name: str, base: nn.Module) -> torch.Tensor:  # per layer: never all at once in fp32
        w = lora.weight_matrix(base).float()
        for c in previous.get(name, []):
            w = w + c.delta().to(w.device)
        return w

    params = adapted.trainable_parameters()
    for p in params:
        p.requires_grad_(False)  # the Fisher needs no LoRA gradient
    try:
        factors = fila_init_factors(
            adapted.model, config, bases, forget_ts, retain_ts, device, progress, effective_weight
        )
    finally:
        for p in params:
            p.requires_grad_(True)
    r = config.rank
    for name, layer in layers.items():
        a0, b0 = factors[name]
        a, b = (t.clone() for t in adapted.initial[name])
        a[:r], a[r : 2 * r] = a0, a0
        b[:, :r], b[:, r : 2 * r] = b0, -b0
        lora.set_factors(layer, a, b)
        adapted.initial[name] = (a, b)


FISHER_MEMORY_BYTES = 4 << 30  # fp32 Fisher accumulators (forget + retain) held at once, off CUDA


def fisher_memory_budget(device: torch.device) -> int:
    """Bytes of Fisher accumulators to hold at once: half the free memory of a GPU (after the model is loaded;
    fewer groups = fewer passes), else FISHER_MEMORY_BYTES."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return max(1 << 30, free // 2)
    return FISHER_MEMORY_BYTES


def fisher_groups(targets: dict[str, nn.Module], budget_bytes: int) -> list[dict[str, nn.Module]]:
    """Target layers split into groups whose two fp32 Fisher matrices fit `budget_bytes`. The Fisher is as
    large as the weights it covers, in fp32, twice (forget and retain): 52 GB for a 7B model's projections.
    Each group costs one more pass over the Fisher examples, and a group never splits a layer."""
    groups: list[dict[str, nn.Module]] = [{}]
    used = 0
    for name, module in targets.items():
        size = 2 * 4 * lora.weight_matrix(module).numel()
        if groups[-1] and used + size > budget_bytes:
            groups.append({})
            used = 0
        groups[-1][name] = module
        used += size
    return groups


def fila_init_factors(
    model: nn.Module,
    config: UnlearnConfig,
    targets: dict[str, nn.Module],
    forget_ts: TokenSet,
    retain_ts: TokenSet,
    device: torch.device,
    progress: Progress = _noop_progress,
    weight_of: Callable[[str, nn.Module], torch.Tensor] | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """FILA's (A, B) per target: Fisher on the forget set and on a seeded sample of the retain set, their
    ratio, and the Fisher-weighted SVD of `weight_of(name, module)` (default: the target's own weight), one
    memory-bounded group of layers at a time (`fisher_groups`)."""
    batch = max(config.batch_size, config.retain_batch_size)  # a training step's activation memory
    gen = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(retain_ts), generator=gen)[: config.fisher_max_examples].tolist()
    retain_sample = retain_ts.select(order)
    groups = fisher_groups(targets, fisher_memory_budget(device))
    factors = {}
    for g, group in enumerate(groups):
        info = {"group": g + 1, "groups": len(groups)}
        f_forget = diagonal_fisher(
            model,
            forget_ts,
            group,
            device,
            max_examples=config.fisher_max_examples,
            batch_size=batch,
            on_example=lambda i, n, info=info: progress("fisher", i, n, {"set": "forget", **info}),
        )
        f_retain = (
            diagonal_fisher(
                model,
                retain_sample,
                group,
                device,
                batch_size=batch,
                on_example=lambda i, n, info=info: progress("fisher", i, n, {"set": "retain", **info}),
            )
            if len(retain_sample)
            else {k: torch.zeros_like(v) for k, v in f_forget.items()}
        )
        for name, module in group.items():
            f_rel = relative_importance(f_forget.pop(name), f_retain.pop(name))
            weight = weight_of(name, module) if weight_of is not None else lora.weight_matrix(module)
            factors[name] = fila_factors(weight, f_rel, config.rank, config.scaling)
    return factors


ANCHOR_CACHE_BYTES = 1 << 30  # reference logits kept across steps (retain and never-seen anchor rows)


class RowLogits:
    """A fixed model's logits per training row, computed once per row and kept while they fit `budget_bytes`
    (rows recur every epoch of their set). Rows beyond the budget are recomputed when drawn (a large vocabulary
    holds few rows: 128k × 256 positions × 4 B = 128 MiB per row). Subclasses say which model (`_compute`)."""

    def __init__(self, device: torch.device, budget_bytes: int = ANCHOR_CACHE_BYTES) -> None:
        self.device = device
        self.budget, self.used = budget_bytes, 0
        self.rows: dict[tuple[str, int], torch.Tensor] = {}

    def _compute(self, batch: TokenSet) -> torch.Tensor:
        raise NotImplementedError

    def of(self, batch: TokenSet, keys: list[tuple[str, int]]) -> torch.Tensor:
        """Logits (B×T×V) of the batch's rows (`keys` name each row's set and index), padding positions 0."""
        missing = [j for j, k in enumerate(keys) if k not in self.rows]
        fresh: dict[int, torch.Tensor] = {}
        if missing:
            computed = self._compute(batch.select(missing))
            for local, j in enumerate(missing):
                row = computed[local, : len(batch.encoded[j].ids)]
                size = row.numel() * row.element_size()
                if self.used + size <= self.budget:
                    self.rows[keys[j]] = row.clone()
                    self.used += size
                else:
                    fresh[j] = row
        template = computed if missing else self.rows[keys[0]]
        out = template.new_zeros((len(keys), batch.input_ids.size(1), template.size(-1)))
        for j, k in enumerate(keys):
            row = fresh.get(j)
            row = self.rows[k] if row is None else row
            out[j, : row.size(0)] = row
        return out


class AnchorLogits(RowLogits):
    """The anchor model's logits on the retain (and never-seen reference) rows of each step: the anchor never
    changes during a run (the original model for ctd, the starting version for KL and anchored jobs), and rows
    recur every epoch of the retain set (the demo's 290 retain records come back every 12 steps). Computed in
    eval mode, so the anchor is the model's inference behaviour (no dropout noise in its target)."""

    def __init__(
        self, adapted: Adapted, original: bool, device: torch.device, budget_bytes: int = ANCHOR_CACHE_BYTES
    ) -> None:
        super().__init__(device, budget_bytes)
        self.adapted, self.original = adapted, original

    def _compute(self, batch: TokenSet) -> torch.Tensor:
        model = self.adapted.model
        was_training = model.training
        anchor = self.adapted.original() if self.original else self.adapted.reference()
        # Before the trained forward: the FILA reference swaps weights in place, which must not happen under a
        # live autograd graph.
        with torch.no_grad(), autocast(self.device), anchor as ref:
            ref.eval()
            try:
                b = batch.to(self.device)
                return ref(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
            finally:
                ref.train(was_training)


class TeacherLogits(RowLogits):
    """A second model's logits on the forget rows (the `restore` objective's teacher: the checkpoint from
    before the corrupting data): it never changes during a run either."""

    def __init__(self, teacher: nn.Module, device: torch.device, budget_bytes: int = ANCHOR_CACHE_BYTES) -> None:
        super().__init__(device, budget_bytes)
        self.teacher = teacher

    def _compute(self, batch: TokenSet) -> torch.Tensor:
        with torch.no_grad(), autocast(self.device):
            b = batch.to(self.device)
            return self.teacher(input_ids=b.input_ids, attention_mask=b.attention_mask).logits


@dataclass
class LoopResult:
    steps: int
    reached: bool
    history: list[dict]
    trainable_params: int
    last_check: Forgetting | None = None
    # The passing check's full evaluation of the model the loop stopped on (forget, holdout, retain): the
    # after-report when nothing changes the model after the loop (core/pipeline.py).
    final: dict[str, SetScores] | None = None


def step_budget(config: UnlearnConfig, n_records: int) -> int:
    """`max_steps`, or for a forget set larger than the `budget_records` it was sized for, proportionally more:
    ctd needs about 5 steps per forgotten person beyond 10 on the demo world (147 ± 6 at 30 people, within 200),
    and a job that serves a burst of coalesced requests forgets all of their records at once."""
    if not config.budget_records or n_records <= config.budget_records:
        return config.max_steps
    return math.ceil(config.max_steps * n_records / config.budget_records)


def _batches(n: int, size: int, gen: torch.Generator) -> Iterator[list[int]]:
    """Endless shuffled batches over n items (each epoch a new permutation)."""
    size = min(size, n)
    while True:
        perm = torch.randperm(n, generator=gen).tolist()
        for i in range(0, n - size + 1, size):
            yield perm[i : i + size]
        if n % size:
            yield perm[-size:]


def train(
    adapted: Adapted,
    forget_ts: TokenSet,
    retain_ts: TokenSet,
    config: UnlearnConfig,
    device: torch.device,
    *,
    rule: StoppingRule | None,
    progress: Progress = _noop_progress,
    should_cancel: CancelCheck = _never,
    anchored: bool = False,
    calibration: Calibration | None = None,
    reference_ts: TokenSet | None = None,
    samples_ts: TokenSet | None = None,
    teacher: nn.Module | None = None,
    start_scores: tuple[SetScores, SetScores] | None = None,
) -> LoopResult:
    """Optimise the objective until the stopping rule holds (checked every `eval_every` steps and at step 0)
    or `max_steps`. Without a rule (no holdout set) it runs `max_steps` and never claims "reached".
    `start_scores`: the forget and holdout scores of the starting model on `forget_ts` and the rule's holdout
    (the job's before-report), which the step-0 check judges instead of scoring them again.

    `anchored` (a cumulative job, whose starting model is the previous version): the retain term is
    `previous_kl_weight`·KL(starting model ‖ model) instead of λ·NLL (see core/losses.py `_retain_term`).
    `calibration`: what the `ctd` objective derives its forget-token targets from (`calibrate`), with the
    holdout's profiles under the current model, from every check that scored the holdout (step 0's included).
    `reference_ts`: never-seen records the anchor also holds (the holdout's calibration half, for a pure
    anchor): a quarter of each
    step's anchor rows, so the model's behaviour on strangers — the verdict's reference — does not drift.
    `samples_ts`: the original model's own samples (core/self_samples.py), another quarter, taken from the
    retain rows' share: its knowledge beyond the registered sets does not drift either. `teacher`: the model
    whose logits on the forget rows the `restore` objective distils (in eval mode, never trained)."""
    objective = OBJECTIVES[config.method]
    if objective.needs_teacher and teacher is None:
        raise InvalidInput(f"method {config.method!r} needs the checkpoint it restores from (restore_from)")
    teacher_logits = TeacherLogits(teacher.eval(), device) if objective.needs_teacher else None
    budget = step_budget(config, forget_ts.n_records)
    targets: ForgetTargets | None = None
    if objective.needs_forget_targets:
        if calibration is None or rule is None:
            raise InvalidInput(f"method {config.method!r} needs the model's holdout set to calibrate its targets")
        # The first targets come from the step-0 check's holdout scores (below): no forward pass of their own.
    anchor_weight = config.previous_kl_weight if anchored and objective.uses_retain else 0.0
    model = adapted.model
    params = adapted.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    warmup = config.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    forget_batches = _batches(len(forget_ts), config.batch_size, gen)
    use_retain = objective.uses_retain and len(retain_ts) > 0 and config.retain_batch_size > 0
    quarter = max(1, config.retain_batch_size // 4)
    n_ref = quarter if use_retain and reference_ts is not None and len(reference_ts) else 0
    n_samp = quarter if n_ref and samples_ts is not None and len(samples_ts) else 0
    n_retain = max(1, config.retain_batch_size - n_ref - n_samp)
    groups = (("retain", retain_ts, n_retain), ("reference", reference_ts, n_ref), ("sample", samples_ts, n_samp))
    anchor_groups = [(name, ts, _batches(len(ts), n, gen)) for name, ts, n in groups if use_retain and n]

    ref_forget_logp = None
    if objective.needs_ref_forget_logp:
        with torch.inference_mode(), autocast(device):
            full = forget_ts.to(device)
            ref_forget_logp = sequence_logprob(
                model(input_ids=full.input_ids, attention_mask=full.attention_mask).logits, full.labels
            ).float()

    history: list[dict] = []
    last: list[Forgetting] = []
    final: dict[str, SetScores] = {}

    def check(step: int, loss: float | None) -> bool:
        """The verdict's forgetting conditions on the current model (StoppingRule); history keeps the scores
        of every check (the unlearning curve of the report) and which conditions still fail."""
        nonlocal targets
        if rule is None:
            ma = evaluate_set(model, forget_ts, device, el_n=config.el_n, generate=False).metrics.ma
            m = {"step": step, "loss": loss, "forget_ma": ma}
            history.append(m)
            progress("unlearning", step, budget, m)
            return False
        with adapted.merged() as evaluated:  # the LoRA folded in: ≈ 15–20 % faster forward passes, same model
            checked = rule.check(evaluated, forget_ts, device, start_scores if step == 0 else None)
        result = checked.forgetting
        last[:] = [result.whole]
        cond = {c.name: c.value for c in result.whole.conditions}
        m = {
            "step": step,
            "loss": loss,
            "forget_ma": cond["ma"],
            "forget_el": cond["el"] if result.generated else None,
            **{f"{name}_auc": t.auc for name, t in result.whole.scores.items()},
            "failed": result.failed + (checked.utility.failed if checked.utility else []),
            **({"screened": True} if checked.screened else {}),
        }
        history.append(m)
        progress("unlearning", step, budget, m)
        if calibration is not None and not checked.passed and not checked.screened:
            # The holdout moves with the model (un-memorising one person's phone number makes every other
            # number a little likelier): the targets follow its current profiles.
            h = checked.holdout  # scored by this check on the model as it is now: no second forward pass
            targets = calibration.targets(
                row_profiles(h.row_logp, h.row_hits, [e.zlib_bytes for e in rule.holdout.encoded])
            )
        if checked.passed and checked.retain is not None:
            final.update(forget=checked.forget, holdout=checked.holdout, retain=checked.retain)
        return checked.passed

    def result(steps: int, reached: bool) -> LoopResult:
        done = final if reached and final else None
        return LoopResult(steps, reached, history, adapted.trainable_count(), last[0] if last else None, done)

    model.train()
    if check(0, None):
        return result(0, True)
    step = 0
    reached = False
    anchor_logits = (
        AnchorLogits(adapted, objective.anchors_reference, device)
        if use_retain and (objective.needs_ref_retain_logits or anchor_weight > 0)
        else None
    )
    for step in range(1, budget + 1):
        if should_cancel():
            raise Cancelled(f"cancelled at step {step - 1}")
        f_idx = next(forget_batches)
        fb = forget_ts.select(f_idx).to(device)
        # The anchor rows: retained records first (the top-1 hinge's rows), then never-seen ones and samples.
        anchor_rows, keys = [], []
        for name, ts, batches in anchor_groups:
            idx = next(batches)
            anchor_rows.append(ts.select(idx))
            keys += [(name, i) for i in idx]
        rb = concat(anchor_rows).to(device) if anchor_rows else None
        ref_logits = anchor_logits.of(rb, keys) if anchor_logits is not None and rb is not None else None
        teacher_out = teacher_logits.of(fb, [("forget", i) for i in f_idx]) if teacher_logits is not None else None
        with autocast(device):
            forget_logits, *anchor_logits_now = forward_sets(model, [fb, *(r.to(device) for r in anchor_rows)])
            inputs = LossInputs(
                forget_logits=forget_logits,
                forget_labels=fb.labels,
                retain_weight=config.retain_weight,
                margin_weight=config.margin_weight,
                demote_weight=config.demote_weight,
                hinge_rows=n_retain if n_ref else None,
                anchor_weight=anchor_weight,
                npo_beta=config.npo_beta,
                teacher_forget_logits=teacher_out,
            )
            if ref_forget_logp is not None:
                inputs.ref_forget_logp = ref_forget_logp[torch.as_tensor(f_idx, device=device)]
            if targets is not None:
                width = fb.input_ids.size(1) - 1
                rows = torch.as_tensor(f_idx)
                inputs.forget_target_logp = targets.target_logp[rows][:, :width].to(device)
                inputs.forget_top1_allowed = targets.top1_allowed[rows][:, :width].to(device)
            if rb is not None:
                inputs.retain_logits = _pad_cat(anchor_logits_now, rb.input_ids.size(1))
                inputs.retain_labels = rb.labels
                if ref_logits is not None:
                    inputs.ref_retain_logits = ref_logits[:, : rb.input_ids.size(1)]
            loss, parts = objective.fn(inputs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % config.eval_every == 0 or step == budget:
            if check(step, float(loss.detach())):
                reached = True
                break
        else:
            progress("unlearning", step, budget, {"step": step, "loss": float(loss.detach()), **parts})
    model.eval()
    return result(step, reached)


def forward_sets(model: nn.Module, sets: list[TokenSet]) -> list[torch.Tensor]:
    """The model's logits on the rows of each set, each trimmed to its set's width. All sets in one forward pass
    where padding them to one width costs little (`packs_well`): fewer kernel launches on taller matmuls (the
    step is launch-bound on small models). Otherwise sets of similar width share a pass: a step of long
    documents (RESTOR's "much context" ones, 159 tokens, with the never-seen anchor rows as long) and 16-token
    retain rows padded to one width computed ≈ 2× the tokens it needed."""
    if packs_well(sets):
        packs = [list(range(len(sets)))]
    else:
        packs = []
        for i in sorted(range(len(sets)), key=lambda i: sets[i].input_ids.size(1)):
            if packs and packs_well([sets[j] for j in packs[-1]] + [sets[i]]):
                packs[-1].append(i)
            else:
                packs.append([i])
    out: list[torch.Tensor | None] = [None] * len(sets)
    for pack in packs:
        batch = concat([sets[i] for i in pack])
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        start = 0
        for i in pack:
            rows, width = sets[i].input_ids.shape
            out[i] = logits[start : start + rows, :width]
            start += rows
    return out  # type: ignore[return-value]


def _pad_cat(logits: list[torch.Tensor], width: int) -> torch.Tensor:
    """Per-set logits as one batch of `width` positions (the padding positions carry no label)."""
    return torch.cat([torch.nn.functional.pad(t, (0, 0, 0, width - t.size(1))) for t in logits])


@torch.no_grad()
def calibrate(
    model: nn.Module,
    forget_ts: TokenSet,
    holdout_ts: TokenSet,
    device: torch.device,
    tail_p: float = 0.05,
    groups: list[list[int]] | None = None,
    scored: tuple[SetScores, SetScores] | None = None,
) -> Calibration:
    """The `ctd` objective's calibration (core/calibration.py) from the starting model: token levels on the
    holdout, the forget tokens' starting log-probs; the targets come with the holdout's profiles. `scored`:
    the starting model's forget and holdout scores on these sets (their per-row log-probs are what the
    calibration reads), in place of two forward passes."""
    if len(holdout_ts) < 2:
        raise InvalidInput("calibrated unlearning needs at least 2 holdout records")
    if scored is not None:
        f_logp, h_logp = (_dense(s.row_logp, ts) for s, ts in zip(scored, (forget_ts, holdout_ts), strict=True))
        h_mask = holdout_ts.labels[:, 1:] != IGNORE
    else:
        h_logp, h_mask, _ = _token_logprobs_of(model, holdout_ts, device)
        f_logp, _, _ = _token_logprobs_of(model, forget_ts, device)
    h_labels = holdout_ts.labels[:, 1:]
    levels = token_levels(h_labels[h_mask], h_logp[h_mask], _vocab_size(model))
    row_groups = None
    if groups:  # records → the rows (windows) that hold them
        row_groups = [[i for i, e in enumerate(forget_ts.encoded) if e.record in set(g)] for g in groups]
    return Calibration(
        forget_ts.labels[:, 1:], f_logp, levels, [e.zlib_bytes for e in forget_ts.encoded], tail_p, row_groups
    )


def _dense(row_logp: list[torch.Tensor], ts: TokenSet) -> torch.Tensor:
    """Per-row target log-probs (`SetScores.row_logp`: each row's target positions in order) back on the
    shifted label grid (B×(T−1), 0 where there is no target), as `_token_logprobs_of` returns them."""
    mask = ts.labels[:, 1:] != IGNORE
    out = torch.zeros(mask.shape)
    for i, lp in enumerate(row_logp):
        out[i, mask[i]] = lp.float()
    return out


def _token_logprobs_of(
    model: nn.Module, ts: TokenSet, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shifted target log-probs, mask and argmax hits (B×(T−1), on the CPU) of a whole set, batch by batch."""
    width = ts.input_ids.size(1) - 1
    out_logp, out_mask, out_top1 = [], [], []
    was_training = model.training
    model.eval()
    for start, logits in zip(range(0, len(ts), 32), forward_logits(model, ts, device, 32), strict=True):
        labels = ts.labels[start : start + 32, : logits.size(1)].to(device)
        picked, mask = token_logprobs(logits, labels)
        pad = width - picked.size(1)
        out_logp.append(torch.nn.functional.pad(picked.float().cpu(), (0, pad)))
        out_mask.append(torch.nn.functional.pad(mask.cpu(), (0, pad)))
        top1 = logits[:, :-1].argmax(-1) == labels[:, 1:]
        out_top1.append(torch.nn.functional.pad(top1.cpu(), (0, pad)))
    model.train(was_training)
    return torch.cat(out_logp), torch.cat(out_mask), torch.cat(out_top1)


def _vocab_size(model: nn.Module) -> int:
    return int(model.get_output_embeddings().weight.size(0))
