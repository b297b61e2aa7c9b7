"""Diagonal Fisher information and FILA, the Fisher-weighted LoRA initialisation (Cha et al. 2024).

FILA puts the LoRA factors on the directions of each weight that matter most for the forget set relative to
the retain set, so the few trainable parameters are exactly the ones that carry the memorised records.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from core.data import TokenSet
from core.device import autocast
from core.lora import is_conv1d, weight_matrix
from core.losses import token_logprobs

EPS = 1e-5


def diagonal_fisher(
    model: nn.Module,
    ts: TokenSet,
    targets: dict[str, nn.Module],
    device: torch.device,
    *,
    max_examples: int | None = None,
    on_example: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher of the NLL for each target weight, as an (out × in) matrix:
    `F = Σ_x (∂ NLL(x)/∂W)² / (number of target tokens)`, per-example gradients, accumulated in fp32.

    Only the target weights get gradients, so the cost is one forward/backward per example on a frozen model.
    """
    n = len(ts) if max_examples is None else min(len(ts), max_examples)
    params = {name: m.weight for name, m in targets.items()}
    saved = {name: p.requires_grad for name, p in params.items()}
    acc = {name: torch.zeros(weight_matrix(m).shape, dtype=torch.float32, device=device) for name, m in targets.items()}
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        for p in params.values():
            p.requires_grad_(True)
        for i in range(n):
            b = ts.select([i]).to(device)
            model.zero_grad(set_to_none=True)
            with autocast(device):
                logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
            picked, mask = token_logprobs(logits, b.labels)
            (-picked.sum()).backward()
            tokens += int(mask.sum())
            for name, m in targets.items():
                g = m.weight.grad
                if g is not None:
                    g = g.float()
                    acc[name] += (g.T if is_conv1d(m) else g) ** 2
            if on_example is not None:
                on_example(i + 1, n)
    finally:
        model.zero_grad(set_to_none=True)
        for name, p in params.items():
            p.requires_grad_(saved[name])
        model.train(was_training)
    return {name: a / max(tokens, 1) for name, a in acc.items()}


def relative_importance(f_forget: torch.Tensor, f_retain: torch.Tensor) -> torch.Tensor:
    """`F_rel = F_f / (F_r + 1e-5)`: what matters for the forget set but not for the retain set."""
    return f_forget / (f_retain + EPS)


def fila_factors(
    weight: torch.Tensor, f_rel: torch.Tensor, rank: int, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """FILA factors for one weight W (out × in), from DESIGN §5 / Cha et al. 2024:

    `w_i = sqrt(Σ_j F_rel[i, j])`, `U, S, V = svd_r(diag(w)·W)`, `A = sqrt(S/s)·Vᵀ` (r × in),
    `B = diag(1/(w + 1e-5))·U·sqrt(S/s)` (out × r). The caller sets the frozen base to `W − s·B·A`, so the
    model is unchanged at step 0 (PiSSA's residual init, with Fisher row weights).
    """
    w32 = weight.float()
    row = f_rel.float().sum(dim=1).sqrt()
    u, s, vh = torch.linalg.svd(row[:, None] * w32, full_matrices=False)
    r = min(rank, s.numel())
    root = (s[:r] / scaling).sqrt()
    a = root[:, None] * vh[:r]
    b = (1.0 / (row + EPS))[:, None] * u[:, :r] * root[None, :]
    if r < rank:  # a weight smaller than the rank: pad with zero directions (still exact)
        a = torch.cat([a, a.new_zeros(rank - r, a.size(1))])
        b = torch.cat([b, b.new_zeros(b.size(0), rank - r)], dim=1)
    return a, b
