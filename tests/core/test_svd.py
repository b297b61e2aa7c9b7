"""FILA's SVD: exact on small weights, randomised (seeded) on large ones, where it finds the same leading
subspace; step 0 stays exact either way, since the frozen half is −B₀A₀ of the same factors."""

from __future__ import annotations

import torch

from unlearnd.core.fila import EXACT_SVD_MAX_DIM, fila_factors, top_svd


def _low_rank_plus_noise(out: int, inp: int) -> torch.Tensor:
    torch.manual_seed(0)
    signal = torch.randn(out, 8) @ torch.diag(torch.linspace(30, 10, 8)) @ torch.randn(8, inp) / inp**0.5
    return signal + torch.randn(out, inp) / inp**0.5


def test_randomised_svd_finds_the_leading_subspace_of_a_large_weight():
    m = _low_rank_plus_noise(EXACT_SVD_MAX_DIM + 256, 1536)
    u, s, vh = top_svd(m, 8)
    u_exact, s_exact, _ = torch.linalg.svd(m, full_matrices=False)
    assert u.shape[1] >= 8 and vh.shape[0] >= 8
    assert torch.allclose(s[:8], s_exact[:8], rtol=1e-3)
    overlap = torch.linalg.svdvals(u_exact[:, :8].T @ u[:, :8]).square().mean()
    assert overlap > 0.999
    again = top_svd(m, 8)  # seeded: a job is reproducible
    assert torch.equal(again[0], u)


def test_fila_factors_of_a_large_weight_are_a_rank_r_part_of_it():
    w = _low_rank_plus_noise(EXACT_SVD_MAX_DIM + 256, 1536)
    f_rel = torch.rand_like(w)
    a, b = fila_factors(w, f_rel, rank=8, scaling=2.0)
    assert a.shape == (8, 1536) and b.shape == (w.size(0), 8)
    residual = w - 2.0 * b @ a
    # the factors take the weighted top-8 directions out of W: the residual is close to the noise alone
    assert torch.linalg.matrix_norm(residual) < 0.6 * torch.linalg.matrix_norm(w)
