"""How unlikely should each forget token become? Targets calibrated against the never-seen holdout.

A forget record is memorised where the model is more confident than it would be about a stranger's record:
the phone number, the birth date, the rare name — not the template words it shares with everyone. The holdout
says what "a stranger's record" looks like to this model, at two levels:

- **tokens**: the mean log-probability the starting model gives each token id when it is a target in a holdout
  record, shrunk towards the holdout's overall mean by its count (empirical Bayes, `prior_strength`
  pseudo-tokens) — a token id the holdout never shows falls back to the overall mean. A forget token's
  *excess familiarity* is how far its log-probability lies above that level: `e_t = max(0, a_t − s_t)`;
- **records**: the holdout's per-record losses. The forget records, ranked by how hard their tokens are for a
  stranger, are given the holdout's loss quantiles `(i + ½)/n` as targets, so that after unlearning the forget
  losses are spread like the holdout's — AUC ≈ 0.5 by construction, neither more familiar nor abnormally
  unfamiliar.

Each record's push `λ_i` scales its excess so that its mean NLL reaches its quantile target:
`a*_t = a_t − λ_i·e_t`, `λ_i = clamp((L*_i − mean(−a)) / mean(e), 0, max_push)`. Tokens with no excess keep their
starting probability (the objective then anchors them), so the template shared with retained records is left
alone. Pure tensor code: the inputs are token log-probs the caller computed with the starting model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from unlearnd.core.data import IGNORE
from unlearnd.core.stats import auc


@dataclass
class TokenLevels:
    """Per-token-id mean log-probability on the holdout, shrunk towards the overall mean (empirical Bayes,
    `prior` pseudo-tokens): how predictable a token is for this model in a stranger's record."""

    total: torch.Tensor  # (V,) float64: sum of the holdout's log-probs per token id
    count: torch.Tensor  # (V,) float64
    overall: float
    prior: float = 2.0

    def of(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.clamp(0, self.total.numel() - 1)
        return ((self.total[ids] + self.prior * self.overall) / (self.count[ids] + self.prior)).float()


def token_levels(ids: torch.Tensor, logp: torch.Tensor, vocab_size: int, prior_strength: float = 2.0) -> TokenLevels:
    """`ids`, `logp`: target token ids and their log-probabilities on the holdout (flat, real targets only)."""
    ids = ids.long().flatten()
    logp = logp.double().flatten()
    overall = float(logp.mean()) if logp.numel() else 0.0
    total = torch.zeros(vocab_size, dtype=torch.float64).index_add_(0, ids, logp)
    count = torch.zeros(vocab_size, dtype=torch.float64).index_add_(0, ids, torch.ones_like(logp))
    return TokenLevels(total, count, overall, prior_strength)


@dataclass
class Calibration:
    """The forget tokens, their starting log-probabilities and zlib sizes, and the token levels: what the
    targets are derived from, with the holdout's profiles (`targets`)."""

    labels: torch.Tensor
    start_logp: torch.Tensor
    levels: TokenLevels
    zlib_bytes: list[int]
    tail_p: float = 0.05
    groups: list[list[int]] | None = None  # rows of each request

    def targets(self, profiles: list[Profile]) -> ForgetTargets:
        return forget_targets(
            self.labels, self.start_logp, self.levels, profiles, self.zlib_bytes, tail_p=self.tail_p, groups=self.groups
        )


@dataclass
class ForgetTargets:
    """Target log-probability of every forget target token (B×(T−1), aligned with the shifted labels, 0 where
    there is no target), which tokens may stay the model's top-1 guess, and the plan behind it (for reports)."""

    target_logp: torch.Tensor
    top1_allowed: torch.Tensor  # bool B×(T−1): False where the label must stop being the argmax
    record_target_loss: list[float]
    record_start_loss: list[float]
    donor: list[int]  # the holdout record whose profile each forget record takes
    mask: torch.Tensor  # bool B×(T−1): the target tokens


@dataclass
class Profile:
    """A holdout record as the scores see it: its target log-probabilities sorted ascending, and how many of
    its tokens were the model's top-1 guess (its MA, as a count)."""

    logp: torch.Tensor
    top1: int
    zlib_bytes: int = 1

    @property
    def loss(self) -> float:
        return float(-self.logp.mean())

    def familiarity(self, min_k: float = 0.2) -> tuple[float, float, float]:
        """(−loss, −zlib, Min-k%), as core/metrics.py scores a record."""
        k = max(1, int(self.logp.numel() * min_k))
        return -self.loss, float(self.logp.mean()) / self.zlib_bytes, float(self.logp[:k].mean())


def holdout_profiles(
    labels: torch.Tensor, logp: torch.Tensor, top1: torch.Tensor, zlib_bytes: list[int] | None = None
) -> list[Profile]:
    """Profiles of the holdout records from shifted labels, their log-probs and argmax hits (B×T')."""
    mask = labels != IGNORE
    zb = zlib_bytes or [1] * labels.size(0)
    out = []
    for i in range(labels.size(0)):
        raw = logp[i][mask[i]]
        out.append(Profile(raw.sort().values, int((top1[i] & mask[i]).sum()), zb[i]))
    return out


def row_profiles(row_logp: list[torch.Tensor], row_hits: list[int], zlib_bytes: list[int]) -> list[Profile]:
    """Profiles from what an evaluation already holds per row (core/metrics.py `SetScores.row_logp`/`row_hits`):
    the same as `holdout_profiles` on that model, without a second forward pass over the holdout."""
    return [
        Profile(lp.float().sort().values, int(h), zb) for lp, h, zb in zip(row_logp, row_hits, zlib_bytes, strict=True)
    ]


def donor_pool(profiles: list[Profile], tail_p: float) -> list[int]:
    """The holdout records a forget record may imitate: in no score's tails. A copy of a record the verdict's
    tail check would flag (its conformal p below `tail_p`, with a factor 2 of slack for the fit's error)
    would fail it by construction; the same share is cut from the unfamiliar end, so the pool stays centred
    (cutting one side only shifts every score's AUC below 0.5). Sorted by loss, ascending."""
    fam = torch.tensor([p.familiarity() for p in profiles])  # n × 3
    n = len(profiles)
    above = (fam[None, :, :] >= fam[:, None, :]).sum(1) - 1  # per record and score: others at least as familiar
    below = (fam[None, :, :] <= fam[:, None, :]).sum(1) - 1
    copy_p = (2 + torch.minimum(above, below)) / (n + 1)  # a forget record equal to it, against the whole holdout
    ok = (copy_p >= 2 * tail_p).all(1).tolist()
    pool = [j for j in range(n) if ok[j]] or list(range(n))
    return sorted(pool, key=lambda j: profiles[j].loss)


def forget_targets(
    labels: torch.Tensor,
    start_logp: torch.Tensor,
    levels: TokenLevels,
    profiles: list[Profile],
    zlib_bytes: list[int] | None = None,
    min_k: float = 0.2,
    tail_p: float = 0.05,
    groups: list[list[int]] | None = None,
) -> ForgetTargets:
    """Targets for the forget set (module docstring). `labels` (B×T') and `start_logp` (B×T', the starting
    model's log p of each label, 0 where masked) are shifted as `core.losses.token_logprobs` returns them.
    `groups`: rows of each request a job serves; quantiles are spread within each (every request's own
    records must look like never-seen ones, not only their union)."""
    mask = labels != IGNORE
    stranger = levels.of(labels.clamp_min(0))
    # How unpredictable each token would be for a stranger, never less than it already is.
    hardness = torch.minimum(stranger, start_logp)
    count = mask.sum(1).clamp_min(1)
    start_loss = -(start_logp * mask).sum(1) / count
    donors = donor_pool(profiles, tail_p)
    n = labels.size(0)
    target = start_logp.clone()
    allowed = torch.zeros_like(mask)
    chosen = [0] * n
    zb = zlib_bytes or [int(c) for c in count]  # without sizes: one byte a token (zlib then follows loss)
    per_byte = [1.0 / zb[i] for i in range(n)]  # zlib = loss ÷ compressed bytes
    quantile = [0.5] * n
    for rows in groups or [list(range(n))]:
        # Quantiles spread evenly over each request's records: the less a record compresses, the more of its
        # content is unpredictable — a higher loss quantile, as strangers' records have. (Loss and zlib are
        # tied by zlib = loss ÷ bytes; this order keeps both AUCs near 0.5.)
        for rank, i in enumerate(sorted(rows, key=lambda r: zb[r])):
            quantile[i] = (rank + 0.5) / len(rows)
    # The holdout's per-record scores, as the verdict computes them (NLL oriented: higher = less familiar);
    # the donor pool only lends its profiles' shapes.
    h_loss = sorted(p.loss for p in profiles)
    h_zlib = sorted(-p.familiarity(min_k)[1] for p in profiles)
    h_min_k = sorted(p.familiarity(min_k)[2] for p in profiles)
    shift = _centre(quantile, per_byte, h_loss, h_zlib, h_min_k)
    for i in range(n):
        pos = mask[i].nonzero().squeeze(-1)
        q = min(0.99, max(0.01, quantile[i] + shift))
        chosen[i] = donors[min(len(donors) - 1, int(q * len(donors)))]
        d = profiles[chosen[i]]  # the shape of its profile
        loss = float(_joint_losses(np.array([q]), h_loss, h_zlib, np.array([per_byte[i]]))[0])
        low_mean = _quantile(h_min_k, 1.0 - q)  # a harder record has a lower Min-k%
        profile = fit_profile(d.logp, pos.numel(), min_k, mean=-loss, low_mean=low_mean)  # ascending
        order = hardness[i, pos].argsort()  # the hardest token takes the profile's lowest log-prob
        t = torch.empty(pos.numel())
        t[order] = profile
        k_low = max(1, int(pos.numel() * min_k))
        target[i, pos] = _cap(t, start_logp[i, pos], order[k_low:])
        # The donor's MA, rounded down, less one: the TDEC rule asks forget MA ≤ holdout MA, and a profile
        # that only equals the donors' would sit on that line.
        keep = max(0, int(d.top1 * pos.numel() / d.logp.numel()) - 1)
        if keep:
            allowed[i, pos[order[-keep:]]] = True  # the easiest tokens may stay the top-1 guess
    target = target * mask
    return ForgetTargets(target, allowed, (-target.sum(1) / count).tolist(), start_loss.tolist(), chosen, mask)


def fit_profile(
    donor: torch.Tensor, n: int, min_k: float = 0.2, mean: float | None = None, low_mean: float | None = None
) -> torch.Tensor:
    """The donor's sorted log-probs carried to `n` tokens with the two summary scores built from them set: the
    mean (loss; the donor's unless `mean`) and the mean of the lowest `max(1, ⌊k·n⌋)` (Min-k%; the donor's
    unless `low_mean`). The lowest part and the rest are resampled separately and each shifted to its mean
    (log-probs stay ≤ 0)."""
    m = donor.numel()
    k_d, k_n = max(1, int(m * min_k)), max(1, int(n * min_k))
    low, high = donor[:k_d], donor[k_d:]
    low_n = _resample(low, k_n)
    low_n = low_n + ((low.mean() if low_mean is None else torch.tensor(low_mean)) - low_n.mean())
    if n == k_n:
        return low_n
    overall = donor.mean() if mean is None else torch.tensor(mean)
    rest_mean = (overall * n - low_n.sum()) / (n - k_n)  # keeps the overall mean
    high_n = _resample(high if high.numel() else low[-1:], n - k_n)
    high_n = (high_n + (rest_mean - high_n.mean())).clamp_max(0.0)
    return torch.cat([low_n, high_n]).sort().values


def _quantile(ordered: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default `linear` method)."""
    return float(np.quantile(np.asarray(ordered, float), min(max(q, 0.0), 1.0)))


def _ecdf(ordered: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The holdout's CDF at x, linear between order statistics (the inverse of `_quantile`), vectorised."""
    return np.interp(x, ordered, np.linspace(0.0, 1.0, ordered.size))


def _cap(planned: torch.Tensor, start: torch.Tensor, adjustable: torch.Tensor, rounds: int = 4) -> torch.Tensor:
    """The plan with no token more likely than it started, and the same mean: what capping takes off the
    record's loss is given back by the `adjustable` tokens (the non-lowest ones, so Min-k% is kept), each at
    most up to its starting log-prob."""
    t = torch.minimum(planned, start)
    want = planned.sum()
    for _ in range(rounds):
        deficit = want - t.sum()  # > 0: the capped record is less likely than planned
        room = (start - t)[adjustable].clamp_min(0)
        if deficit <= 1e-6 or room.sum() <= 1e-6:
            break
        t[adjustable] += room * min(1.0, float(deficit / room.sum()))
    return t


def _centre(
    quantile: list[float], per_byte: list[float], h_loss: list[float], h_zlib: list[float], h_min_k: list[float]
) -> float:
    """One shift of every record's quantile that centres the plan: the largest distance from 0.5 of the AUCs
    the planned scores would have against the holdout (loss, zlib, Min-k%), as small as a common shift makes
    it (a small set's loss–zlib compromise leaves the plan off-centre by a few hundredths otherwise)."""
    q0, b = np.asarray(quantile, float), np.asarray(per_byte, float)
    hm = np.asarray(h_min_k, float)

    def off(c: float) -> float:
        qs = np.clip(q0 + c, 0.01, 0.99)
        losses = _joint_losses(qs, h_loss, h_zlib, b)
        aucs = (
            auc(list(-losses), [-x for x in h_loss]),
            auc(list(-losses * b), [-x for x in h_zlib]),
            auc(list(np.quantile(hm, 1.0 - qs)), h_min_k),  # `_quantile` of every record at once
        )
        return max(abs(a - 0.5) for a in aucs)  # the verdict bands every AUC: minimise the worst

    return min((k / 100 for k in range(-25, 26)), key=lambda c: (off(c), abs(c)))


def _joint_losses(q: np.ndarray, h_loss: list[float], h_zlib: list[float], per_byte: np.ndarray) -> np.ndarray:
    """Per record, the mean NLL that puts it at quantile q of *both* the holdout's loss and its zlib score. A
    record of z compressed bytes has zlib = loss ÷ z (`per_byte` = 1/z), so the two cannot be set apart: this is
    the loss whose two quantiles are closest to q together (least squares over a fine grid)."""
    hl, hz = np.asarray(h_loss, float), np.asarray(h_zlib, float)
    grid = np.linspace(0.5 * hl[0], 2.0 * hl[-1], 401)  # (G,)
    f_loss = _ecdf(hl, grid)[None, :]  # (1, G)
    f_zlib = _ecdf(hz, grid[None, :] * per_byte[:, None])  # (n, G)
    err = (f_loss - q[:, None]) ** 2 + (f_zlib - q[:, None]) ** 2
    return grid[err.argmin(1)]


def _resample(sorted_values: torch.Tensor, n: int) -> torch.Tensor:
    """A sorted profile of another length, by linear interpolation of its quantiles."""
    m = sorted_values.numel()
    if m == n:
        return sorted_values.clone()
    if m == 1:
        return sorted_values.expand(n).clone()
    pos = torch.linspace(0, m - 1, n)
    lo = pos.floor().long().clamp_max(m - 1)
    hi = (lo + 1).clamp_max(m - 1)
    frac = pos - lo
    return sorted_values[lo] * (1 - frac) + sorted_values[hi] * frac


def calibrated_logprob_error(
    logits: torch.Tensor,
    labels: torch.Tensor,
    target_logp: torch.Tensor,
    top1_allowed: torch.Tensor,
    margin: float = 0.1,
    demote_weight: float = 1.0,
) -> torch.Tensor:
    """Mean over forget target tokens of `(log p_θ(y_t) − a*_t)²`, each token's log-probability pulled to its
    calibrated target from either side (so it stops where a stranger's would be), plus, where the label may
    no longer be the top-1 guess, the hinge `max(0, log p(y_t) − max_{v≠y_t} log p(v) + margin)` — the
    memorisation-accuracy half of the profile (IHL's idea, Cha et al. 2024, on the tokens that need it only)."""
    lg, lb = logits[:, :-1].float(), labels[:, 1:]
    width = lb.size(1)
    mask = lb != IGNORE
    logp_all = torch.log_softmax(lg, -1)
    idx = lb.clamp_min(0).unsqueeze(-1)
    logp = logp_all.gather(-1, idx).squeeze(-1)
    pen = (logp - target_logp[:, :width].to(logp.dtype)).square() * mask
    runner_up = logp_all.scatter(-1, idx, float("-inf")).amax(-1)
    demote = mask & ~top1_allowed[:, :width].to(mask.device)
    hinge = (logp - runner_up + margin).clamp_min(0) * demote
    return (pen.sum() + demote_weight * hinge.sum()) / mask.sum().clamp_min(1)
