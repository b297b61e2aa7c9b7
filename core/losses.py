"""Every unlearning objective, on causal-LM logits (B×T×V) and labels (B×T) in the Hugging Face convention:
labels are aligned with input_ids and shifted here, -100 is ignored.

Registry `OBJECTIVES` maps the method name a user picks to its objective; `Objective.needs` says which
reference quantities the loop must provide.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unlearnd.core.calibration import calibrated_logprob_error
from unlearnd.core.data import IGNORE


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Position t predicts token t+1."""
    return logits[:, :-1, :], labels[:, 1:]


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(y_t) per target position (B×(T−1), 0 where masked) and the mask of target positions."""
    lg, lb = shift(logits, labels)
    mask = lb != IGNORE
    logp = torch.log_softmax(lg.float(), dim=-1)
    picked = logp.gather(-1, lb.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over target tokens."""
    lg, lb = shift(logits, labels)
    return F.cross_entropy(lg.float().reshape(-1, lg.size(-1)), lb.reshape(-1), ignore_index=IGNORE)


def inverted_hinge_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """IHL (Cha et al. 2024, arXiv 2408.06621): mean over target tokens of `1 + p(y_t) − max_{v≠y_t} p(v)`.

    Unlike gradient ascent it is bounded (in [0, 2]) and stops pushing once the true token is no longer the
    most likely one, moving its mass to the runner-up rather than spreading it over the vocabulary.
    """
    lg, lb = shift(logits, labels)
    mask = lb != IGNORE
    probs = torch.softmax(lg.float(), dim=-1)
    target = lb.clamp_min(0).unsqueeze(-1)
    p_true = probs.gather(-1, target).squeeze(-1)
    p_other = probs.scatter(-1, target, float("-inf")).amax(-1)
    per_token = 1.0 + p_true - p_other
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of target-token log-probabilities per sequence (B,): log π(y|x)."""
    picked, _ = token_logprobs(logits, labels)
    return picked.sum(-1)


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO (Zhang et al. 2024): `(2/β)·log(1 + (π_θ/π_ref)^β)` on sequence likelihoods, averaged."""
    return (2.0 / beta) * F.softplus(beta * (logp - ref_logp)).mean()


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(original ‖ model) per predicted position, averaged over target positions."""
    lg, lb = shift(logits, labels)
    rl, _ = shift(ref_logits, labels)
    mask = (lb != IGNORE).float()
    ref_logp = torch.log_softmax(rl.float(), -1)
    logp = torch.log_softmax(lg.float(), -1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


@dataclass
class LossInputs:
    """What one step hands an objective. Fields an objective does not need may be None."""

    forget_logits: torch.Tensor
    forget_labels: torch.Tensor
    retain_logits: torch.Tensor | None = None
    retain_labels: torch.Tensor | None = None
    ref_forget_logp: torch.Tensor | None = None  # npo: log π_ref(y|x) per forget sequence
    ref_retain_logits: torch.Tensor | None = None  # kl, anchored: the starting model's logits on the retain batch
    forget_target_logp: torch.Tensor | None = None  # ctd: calibrated target log-prob per forget token (shifted)
    forget_top1_allowed: torch.Tensor | None = None  # ctd: where the label may stay the argmax (shifted)
    teacher_forget_logits: torch.Tensor | None = None  # restore: the pre-corruption checkpoint's logits on D_f
    margin_weight: float = 1.0  # ctd: weight of `keep_top1` in the anchor
    demote_weight: float = 1.0  # ctd: weight of the forget tokens' top-1 demotion hinge
    hinge_rows: int | None = None  # ctd: the first rows of the retain block get `keep_top1` (the rest are strangers)
    retain_weight: float = 1.0
    anchor_weight: float = 0.0  # > 0: the retain term is anchor_weight · KL(starting model ‖ model), not λ·NLL
    npo_beta: float = 0.1


@dataclass(frozen=True)
class Objective:
    fn: Callable[[LossInputs], tuple[torch.Tensor, dict[str, float]]]
    uses_retain: bool
    needs_ref_forget_logp: bool = False
    needs_ref_retain_logits: bool = False
    needs_forget_targets: bool = False  # calibrated targets from the holdout's calibration half (ctd)
    anchors_reference: bool = False  # the retain term is a pure anchor: never-seen reference records may join it
    needs_teacher: bool = False  # the forget term distils a second model's logits on the forget rows (restore)


def _retain_term(x: LossInputs) -> tuple[torch.Tensor, float]:
    """λ·NLL(D_r), or for an anchored (cumulative) job w·KL(starting model ‖ model) on D_r: the starting model
    is the previous version, and staying close to it keeps its forgetting, where the NLL would pull the
    earlier forget sets' shared patterns back."""
    if x.retain_logits is None:
        return x.forget_logits.new_zeros(()), 0.0
    if x.anchor_weight > 0 and x.ref_retain_logits is not None:
        return kl_to_reference(x.retain_logits, x.ref_retain_logits, x.retain_labels), x.anchor_weight
    if x.retain_weight == 0:
        return x.forget_logits.new_zeros(()), 0.0
    return nll(x.retain_logits, x.retain_labels), x.retain_weight


def _combine(forget_term: torch.Tensor, retain: tuple[torch.Tensor, float]):
    retain_term, weight = retain
    loss = forget_term + weight * retain_term
    return loss, {"forget_loss": float(forget_term.detach()), "retain_loss": float(retain_term.detach())}


def _ihl(x: LossInputs):
    """IHL(D_f) + λ·NLL(D_r) (or the anchored retain term, see `_retain_term`)."""
    return _combine(inverted_hinge_loss(x.forget_logits, x.forget_labels), _retain_term(x))


def _ga(x: LossInputs):
    """Gradient ascent: −NLL(D_f)."""
    term = -nll(x.forget_logits, x.forget_labels)
    return term, {"forget_loss": float(term.detach()), "retain_loss": 0.0}


def _gd(x: LossInputs):
    """Gradient difference: −NLL(D_f) + λ·NLL(D_r)."""
    return _combine(-nll(x.forget_logits, x.forget_labels), _retain_term(x))


def _kl(x: LossInputs):
    """−NLL(D_f) + λ·KL(original ‖ model) on D_r."""
    retain = (
        kl_to_reference(x.retain_logits, x.ref_retain_logits, x.retain_labels)
        if x.retain_logits is not None and x.ref_retain_logits is not None
        else x.forget_logits.new_zeros(())
    )
    return _combine(-nll(x.forget_logits, x.forget_labels), (retain, x.retain_weight))


def _npo(x: LossInputs):
    """NPO on forget sequence likelihoods + λ·NLL(D_r)."""
    logp = sequence_logprob(x.forget_logits, x.forget_labels)
    return _combine(npo_loss(logp, x.ref_forget_logp, x.npo_beta), _retain_term(x))


def _margin(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """log p(idx) − max_{v≠idx} log p(v) per position (`idx`: B×T×1 token indices)."""
    logp = torch.log_softmax(logits.float(), -1)
    return logp.gather(-1, idx).squeeze(-1) - logp.scatter(-1, idx, float("-inf")).amax(-1)


def keep_top1(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, cap: float = 2.0) -> torch.Tensor:
    """Where the starting model's top-1 guess is the label (what MA and extraction count), a hinge keeping
    the label's log-probability margin over the runner-up at least `min(starting margin, cap)`: the KL
    anchor averages over the whole distribution and barely notices a close call flipping."""
    lg, lb = shift(logits, labels)
    rl, _ = shift(ref_logits, labels)
    mask = lb != IGNORE
    idx = lb.clamp_min(0).unsqueeze(-1)
    m0 = _margin(rl, idx)
    keep = mask & (m0 > 0)
    return ((m0.clamp_max(cap) - _margin(lg, idx)).clamp_min(0) * keep).sum() / mask.sum().clamp_min(1)


def follow_top1(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, cap: float = 2.0):
    """`keep_top1` towards another model's guesses: at every target position, the teacher's top-1 token's
    margin over the runner-up at least `min(teacher's margin, cap)`. The KL averages over the whole
    distribution; the greedy answer a corrupted fact left behind is one token whose flip it barely weighs."""
    lg, lb = shift(logits, labels)
    tl, _ = shift(teacher_logits, labels)
    mask = lb != IGNORE
    idx = tl.argmax(-1, keepdim=True)
    m0 = _margin(tl, idx)
    return ((m0.clamp_max(cap) - _margin(lg, idx)).clamp_min(0) * mask).sum() / mask.sum().clamp_min(1)


def _anchor(x: LossInputs) -> tuple[torch.Tensor, float]:
    """ctd's retain term: w·[KL(starting ‖ model) on D_r and on never-seen records + `keep_top1` on D_r]."""
    if x.retain_logits is None or x.ref_retain_logits is None:
        return x.forget_logits.new_zeros(()), 0.0
    anchor = kl_to_reference(x.retain_logits, x.ref_retain_logits, x.retain_labels)
    k = x.retain_logits.size(0) if x.hinge_rows is None else x.hinge_rows
    if k and x.margin_weight:
        hinge = keep_top1(x.retain_logits[:k], x.ref_retain_logits[:k], x.retain_labels[:k])
        anchor = anchor + x.margin_weight * hinge
    return anchor, x.retain_weight


def _ctd(x: LossInputs):
    """Calibrated target distillation (this project's default; README "Results" says why):
    `E_t[(log p_θ(y_t) − a*_t)²]` + top-1 demotion on the forget tokens (core/calibration.py), each token
    pulled to the probability a never-seen record's token has, no further; + w·[KL(starting ‖ model) on D_r
    and on never-seen records + `keep_top1` on D_r]: what the model must keep (its top-1 guesses on retained
    records are what MA and extraction count) and its behaviour on strangers (what the verdict compares with:
    KL only, so it neither drifts nor is pushed to be more confident)."""
    term = calibrated_logprob_error(
        x.forget_logits, x.forget_labels, x.forget_target_logp, x.forget_top1_allowed, demote_weight=x.demote_weight
    )
    return _combine(term, _anchor(x))


# bench/restor seed 0, lr 5e-3, restoration none/some/much context: 0.72/0.63/0.33 at weight 1, 0.72/0.72/0.56 at 3
# (at lr 2e-3: 0.54/0.38/0.21 without the hinge, 0.59/0.50/0.31 with it at 1).
RESTORE_TOP1_WEIGHT = 3.0


def _restore(x: LossInputs):
    """Restoration from a named checkpoint: KL(checkpoint ‖ model) + `follow_top1` on the forget rows + ctd's
    anchor. For documents that corrupted a model (RESTOR, Rezaei et al. 2024, arXiv 2411.00204) the checkpoint
    from before them is the one model that behaves on them exactly as on data never seen, *and* holds the
    knowledge they overwrote: distilling its full next-token distribution on the documents (UNDIAL's
    self-distillation, Dong et al. 2024, with the earlier checkpoint as teacher) returns its answers, where every
    objective that only pushes the documents' tokens down leaves the overwritten facts lost (README
    "Restoration")."""
    term = kl_to_reference(x.forget_logits, x.teacher_forget_logits, x.forget_labels)
    term = term + RESTORE_TOP1_WEIGHT * follow_top1(x.forget_logits, x.teacher_forget_logits, x.forget_labels)
    return _combine(term, _anchor(x))


OBJECTIVES: dict[str, Objective] = {
    "ihl": Objective(_ihl, uses_retain=True),
    "ga": Objective(_ga, uses_retain=False),
    "gd": Objective(_gd, uses_retain=True),
    "kl": Objective(_kl, uses_retain=True, needs_ref_retain_logits=True),
    "npo": Objective(_npo, uses_retain=True, needs_ref_forget_logp=True),
    "ctd": Objective(
        _ctd, uses_retain=True, needs_ref_retain_logits=True, needs_forget_targets=True, anchors_reference=True
    ),
    "restore": Objective(
        _restore, uses_retain=True, needs_ref_retain_logits=True, anchors_reference=True, needs_teacher=True
    ),
}
