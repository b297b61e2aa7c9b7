"""The unlearning loop: adapt the model (FILA, LoRA or full), optimise the chosen objective with AdamW, and
stop at the TDEC rule — forget-set MA and EL_n at or below the never-seen holdout's.

Progress and cancellation come in as callables so the worker can report to its database and stop between
steps, without core knowing about either.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from core import lora
from core.config import UnlearnConfig
from core.data import TokenSet, concat
from core.device import autocast
from core.errors import Cancelled, InvalidInput
from core.export import Component, Delta, rank_of, stacked
from core.fila import diagonal_fisher, fila_factors, relative_importance
from core.losses import OBJECTIVES, LossInputs, sequence_logprob
from core.metrics import evaluate_set, generation_scores

Progress = Callable[[str, int, int, dict], None]
CancelCheck = Callable[[], bool]


def _noop_progress(phase: str, step: int, total: int, metrics: dict) -> None:
    return None


def _never() -> bool:
    return False


@dataclass
class Thresholds:
    """The holdout's scores: a forget set at or below them is "as unfamiliar as data never seen"."""

    ma: float
    el: float

    def reached(self, ma: float, el: float) -> bool:
        return ma <= self.ma and el <= self.el


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


@dataclass
class LoopResult:
    steps: int
    reached: bool
    history: list[dict]
    trainable_params: int


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
    thresholds: Thresholds | None,
    progress: Progress = _noop_progress,
    should_cancel: CancelCheck = _never,
    anchored: bool = False,
) -> LoopResult:
    """Optimise the objective until the stopping rule holds (checked every `eval_every` steps and at step 0)
    or `max_steps`. Without thresholds (no holdout set) it runs `max_steps` and never claims "reached".

    `anchored` (a cumulative job, whose starting model is the previous version): the retain term is
    `previous_kl_weight`·KL(starting model ‖ model) instead of λ·NLL (see core/losses.py `_retain_term`)."""
    objective = OBJECTIVES[config.method]
    anchor_weight = config.previous_kl_weight if anchored and objective.uses_retain else 0.0
    model = adapted.model
    params = adapted.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    forget_batches = _batches(len(forget_ts), config.batch_size, gen)
    use_retain = objective.uses_retain and len(retain_ts) > 0 and config.retain_batch_size > 0
    retain_batches = _batches(len(retain_ts), config.retain_batch_size, gen) if use_retain else None

    ref_forget_logp = None
    if objective.needs_ref_forget_logp:
        with torch.inference_mode(), autocast(device):
            full = forget_ts.to(device)
            ref_forget_logp = sequence_logprob(
                model(input_ids=full.input_ids, attention_mask=full.attention_mask).logits, full.labels
            ).float()

    history: list[dict] = []

    def check(step: int, loss: float | None) -> bool:
        """The stopping rule needs MA and EL_n; EL_n costs a greedy decode, so it is computed only when MA
        already passes (otherwise the answer is "not yet" whatever EL is, and history records EL as None)."""
        ma = evaluate_set(model, forget_ts, device, el_n=config.el_n, generate=False).metrics.ma
        el = None
        if thresholds is not None and ma <= thresholds.ma:
            el, _ = generation_scores(model, forget_ts, device, config.el_n)
        m = {"step": step, "loss": loss, "forget_ma": ma, "forget_el": el}
        history.append(m)
        progress("unlearning", step, config.max_steps, m)
        return el is not None and thresholds.reached(ma, el)

    model.train()
    if check(0, None):
        return LoopResult(0, True, history, adapted.trainable_count())
    step = 0
    reached = False
    for step in range(1, config.max_steps + 1):
        if should_cancel():
            raise Cancelled(f"cancelled at step {step - 1}")
        f_idx = next(forget_batches)
        fb = forget_ts.select(f_idx).to(device)
        rb = retain_ts.select(next(retain_batches)).to(device) if retain_batches is not None else None
        ref_retain_logits = None
        if rb is not None and (objective.needs_ref_retain_logits or anchor_weight > 0):
            # Before the trained forward: the FILA reference swaps weights in place, which must not
            # happen under a live autograd graph.
            with torch.no_grad(), autocast(device), adapted.reference() as ref:
                ref_retain_logits = ref(input_ids=rb.input_ids, attention_mask=rb.attention_mask).logits
        with autocast(device):
            # One forward pass over the forget and retain rows together: half the kernel launches of two
            # passes, on matmuls twice as tall (the step is launch-bound on small models).
            both = concat([fb, rb]) if rb is not None else fb
            logits = model(input_ids=both.input_ids, attention_mask=both.attention_mask).logits
            n_f = fb.input_ids.size(0)
            inputs = LossInputs(
                forget_logits=logits[:n_f, : fb.input_ids.size(1)],
                forget_labels=fb.labels,
                ref_retain_logits=ref_retain_logits,
                retain_weight=config.retain_weight,
                anchor_weight=anchor_weight,
                npo_beta=config.npo_beta,
            )
            if ref_forget_logp is not None:
                inputs.ref_forget_logp = ref_forget_logp[torch.as_tensor(f_idx, device=device)]
            if rb is not None:
                inputs.retain_logits = logits[n_f:, : rb.input_ids.size(1)]
                inputs.retain_labels = rb.labels
            loss, parts = objective.fn(inputs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % config.eval_every == 0 or step == config.max_steps:
            if check(step, float(loss.detach())):
                reached = True
                break
        else:
            progress("unlearning", step, config.max_steps, {"step": step, "loss": float(loss.detach()), **parts})
    model.eval()
    return LoopResult(step, reached, history, adapted.trainable_count())
