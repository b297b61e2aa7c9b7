"""Diagonal Fisher information and FILA, the Fisher-weighted LoRA initialisation (Cha et al. 2024).

FILA puts the LoRA factors on the directions of each weight that matter most for the forget set relative to
the retain set, so the few trainable parameters are exactly the ones that carry the memorised records.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from unlearnd.core.data import TokenSet
from unlearnd.core.device import autocast
from unlearnd.core.lora import weight_matrix
from unlearnd.core.losses import token_logprobs

EPS = 1e-5
GRADIENT_BUDGET_BYTES = 256 << 20  # per layer: how much memory per-example gradients may take at once
# Weights whose smaller side is at most this get an exact SVD (the tests' and demo's models, bit for bit);
# larger ones a randomised one: an exact SVD of a 2048 × 8192 weight takes 6.8 s on 2 CPU cores, and a 8B
# model has 224 weights up to 4096 × 14336, where the randomised one takes milliseconds on a GPU.
EXACT_SVD_MAX_DIM = 512
RANDOMISED_SVD_OVERSAMPLE = 16
RANDOMISED_SVD_ITERATIONS = 8


def diagonal_fisher(
    model: nn.Module,
    ts: TokenSet,
    targets: dict[str, nn.Module],
    device: torch.device,
    *,
    max_examples: int | None = None,
    batch_size: int = 16,
    on_example: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher of the NLL for each target weight, as an (out × in) matrix:
    `F = Σ_x (∂ NLL(x)/∂W)² / (number of target tokens)`, per-example gradients, accumulated in fp32.

    Batched: one forward/backward per batch, with each example's weight gradient rebuilt from the layer's
    input and output gradient (`∂NLL(x)/∂W = Σ_t δ_t x_tᵀ`, exact because examples do not interact and
    right padding gets zero gradient). No weight gradient is ever computed: only activations carry grad.
    """
    n = len(ts) if max_examples is None else min(len(ts), max_examples)
    # Each accumulator lives with its layer: a model placed across several GPUs keeps its Fisher spread too.
    acc = {
        name: torch.zeros(weight_matrix(m).shape, dtype=torch.float32, device=m.weight.device)
        for name, m in targets.items()
    }
    # Examples of similar length share a batch, so little compute goes to padding (the sum ignores order).
    lengths = ts.attention_mask[:n].sum(1)
    order = sorted(range(n), key=lambda i: int(lengths[i]))
    handles = [_needs_grad_from(model.get_input_embeddings())]
    handles += [m.register_forward_hook(_accumulator(acc[name])) for name, m in targets.items()]
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, batch_size):
            b = ts.select(order[start : start + batch_size]).to(device)
            with autocast(device):
                logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
            picked, mask = token_logprobs(logits, b.labels)
            (-picked.sum()).backward()
            tokens += int(mask.sum())
            if on_example is not None:
                on_example(min(start + batch_size, n), n)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: a / max(tokens, 1) for name, a in acc.items()}


def _needs_grad_from(embedding: nn.Module):
    """Start the autograd graph at the embeddings, so every layer's output gradient exists while the frozen
    weights stay frozen (and no weight gradient is computed)."""
    return embedding.register_forward_hook(lambda _m, _args, out: out.requires_grad_(True))


def _accumulator(acc: torch.Tensor):
    """A forward hook: keep the layer's input, and when its output gradient arrives add the squared
    per-example gradients `(Σ_t δ_t x_tᵀ)²` (out × in, as `weight_matrix`) to `acc`, a few examples at a
    time so they never take more than GRADIENT_BUDGET_BYTES (a 4096 × 11008 layer is 180 MB per example)."""

    def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0].detach()

        def on_grad(grad: torch.Tensor) -> None:
            exact_tf32 = grad.is_cuda and grad.dtype in HALF and x.dtype in HALF
            g, xf = grad.float(), x.float()
            per_batch = max(1, GRADIENT_BUDGET_BYTES // (acc.numel() * 4))
            with _tf32(exact_tf32):
                for s in range(0, g.size(0), per_batch):
                    per_example = torch.einsum("bto,bti->boi", g[s : s + per_batch], xf[s : s + per_batch])
                    if per_example.size(0) == 1:  # a large layer, one example at a time: square, add in one pass
                        acc.addcmul_(per_example[0], per_example[0])
                    else:
                        acc.add_(per_example.square_().sum(0))

        output.register_hook(on_grad)

    return hook


HALF = (torch.bfloat16, torch.float16)


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """TF32 matmuls for the per-example products when their operands are bf16/fp16 values upcast to fp32:
    TF32 keeps 10 mantissa bits, as many as fp16 and more than bf16, so every product is exact (accumulation
    stays fp32) and the GPU's tensor cores do the work. Process-wide while it lasts (one job per GPU)."""
    if not enabled:
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def relative_importance(f_forget: torch.Tensor, f_retain: torch.Tensor) -> torch.Tensor:
    """`F_rel = F_f / (F_r + 1e-5)`: what matters for the forget set but not for the retain set."""
    return f_forget / (f_retain + EPS)


def fila_factors(
    weight: torch.Tensor, f_rel: torch.Tensor, rank: int, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """FILA factors for one weight W (out × in), from DESIGN §5 / Cha et al. 2024:

    `w_i = sqrt(Σ_j F_rel[i, j])`, `U, S, V = svd_r(diag(w)·W)`, `A = sqrt(S/s)·Vᵀ` (r × in),
    `B = diag(1/(w + 1e-5))·U·sqrt(S/s)` (out × r). The caller never writes `W − s·B·A` into the base: it
    trains the rank-2r LoRA `[A; A₀]`, `[B, −B₀]` on the untouched W with the second half frozen
    (core/unlearn.py `init_fila`), so the model is unchanged at step 0 (PiSSA's residual init, with Fisher
    row weights).
    """
    w32 = weight.float()
    row = f_rel.float().to(w32.device).sum(dim=1).sqrt()
    u, s, vh = top_svd(row[:, None] * w32, rank)
    r = min(rank, s.numel())
    root = (s[:r] / scaling).sqrt()
    a = root[:, None] * vh[:r]
    b = (1.0 / (row + EPS))[:, None] * u[:, :r] * root[None, :]
    if r < rank:  # a weight smaller than the rank: pad with zero directions (still exact)
        a = torch.cat([a, a.new_zeros(rank - r, a.size(1))])
        b = torch.cat([b, b.new_zeros(b.size(0), rank - r)], dim=1)
    return a, b


def top_svd(m: torch.Tensor, rank: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The leading singular triplets of m (at least `rank` of them): exact for small matrices, else randomised
    subspace iteration (Halko, Martinsson & Tropp 2011, algorithm 4.4) with `rank + 16` columns, 8 power
    iterations and a seeded start, so a job is reproducible. The FILA paper's code uses `torch.svd_lowrank`
    with 2 iterations. Either way the model is unchanged at step 0: the frozen half is −B₀A₀ of the same factors.
    """
    if min(m.shape) <= max(EXACT_SVD_MAX_DIM, rank):
        return torch.linalg.svd(m, full_matrices=False)
    width = min(rank + RANDOMISED_SVD_OVERSAMPLE, min(m.shape))
    gen = torch.Generator(device=m.device).manual_seed(seed)
    y = m @ torch.randn(m.size(1), width, generator=gen, device=m.device, dtype=m.dtype)
    for _ in range(RANDOMISED_SVD_ITERATIONS):
        q, _ = torch.linalg.qr(y)  # re-orthonormalise, or the columns collapse onto the top direction
        y = m @ (m.T @ q)
    q, _ = torch.linalg.qr(y)
    u_small, s, vh = torch.linalg.svd(q.T @ m, full_matrices=False)
    return q @ u_small, s, vh
