import pytest
import torch

from core.data import encode_set
from core.fila import diagonal_fisher, fila_factors, relative_importance
from core.lora import weight_matrix
from core.modeling import default_target_modules, find_targets, load_model
from core.unlearn import adapt
from tests.conftest import fast_config


def test_fila_factors_reconstruct_the_fisher_weighted_truncated_svd():
    torch.manual_seed(0)
    w = torch.randn(12, 7, dtype=torch.float64)
    f_rel = torch.rand(12, 7, dtype=torch.float64)
    rank, s = 3, 2.0
    a, b = fila_factors(w, f_rel, rank, s)
    assert a.shape == (3, 7) and b.shape == (12, 3)
    row = f_rel.sum(1).sqrt()
    u, sv, vh = torch.linalg.svd(row[:, None] * w, full_matrices=False)
    expected = (1 / (row + 1e-5))[:, None] * (u[:, :rank] * sv[:rank]) @ vh[:rank]
    assert torch.allclose(s * b.double() @ a.double(), expected, atol=1e-5)


def test_fila_with_full_rank_recovers_the_weight():
    torch.manual_seed(1)
    w = torch.randn(6, 4)
    a, b = fila_factors(w, torch.ones(6, 4), rank=4, scaling=0.5)
    assert torch.allclose(0.5 * b @ a, w, atol=1e-4)


def test_relative_importance_formula():
    ff, fr = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    assert torch.allclose(relative_importance(ff, fr), torch.tensor([[2.0 / (1 + 1e-5), 0.0]]))


@pytest.mark.slow
def test_diagonal_fisher_equals_per_example_squared_gradients_over_tokens(tiny_loaded, tiny_world):
    model, tok, device = tiny_loaded.model, tiny_loaded.tokenizer, tiny_loaded.device
    ts = encode_set(tok, tiny_world.forget[:3])
    targets = find_targets(model, ["q_proj"])
    fisher = diagonal_fisher(model, ts, targets, device)
    name, module = next(iter(targets.items()))
    acc, tokens = torch.zeros_like(module.weight), 0
    module.weight.requires_grad_(True)
    try:
        for i in range(len(ts)):
            b = ts.select([i])
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
            lp = torch.log_softmax(logits[:, :-1], -1)
            lab = b.labels[:, 1:]
            m = lab != -100
            loss = -(lp.gather(-1, lab.clamp_min(0)[..., None])[..., 0] * m).sum()
            (g,) = torch.autograd.grad(loss, module.weight)
            acc += g**2
            tokens += int(m.sum())
    finally:
        module.weight.requires_grad_(False)
    assert torch.allclose(fisher[name], acc / tokens, rtol=1e-4, atol=1e-10)
    assert not any(p.requires_grad for p in model.parameters())


def _logits(model, ts):
    with torch.inference_mode():
        return model(input_ids=ts.input_ids, attention_mask=ts.attention_mask).logits


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt_neo", "gpt2"])
def test_fila_initialised_model_equals_original_at_step_zero(arch, tiny_world, tiny_gpt2_dir):
    source = tiny_world.model_dir if arch == "gpt_neo" else tiny_gpt2_dir
    loaded = load_model(source, device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    ts = encode_set(tok, tiny_world.forget + tiny_world.holdout[:4])
    before = _logits(model, ts)
    targets = find_targets(model, default_target_modules(model))
    originals = {n: weight_matrix(m).detach().clone() for n, m in targets.items()}
    adapted = adapt(
        model,
        fast_config(rank=4, alpha=8),
        targets,
        ts,
        encode_set(tok, tiny_world.retain[:8]),
        loaded.device,
    )
    after = _logits(adapted.model, ts)
    assert (after - before).abs().max().item() <= 1e-4
    # the base really moved to the residual: the LoRA carries the principal Fisher-weighted part
    moved = max((weight_matrix(m) - originals[n]).abs().max().item() for n, m in targets.items())
    assert moved > 1e-3
