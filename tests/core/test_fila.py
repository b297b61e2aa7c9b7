import pytest
import torch

from tests.conftest import fast_config
from unlearnd.core.data import encode_set
from unlearnd.core.fila import diagonal_fisher, fila_factors, relative_importance
from unlearnd.core.lora import weight_matrix
from unlearnd.core.modeling import default_target_modules, find_targets, load_model
from unlearnd.core.unlearn import adapt


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


def _per_example_fisher(model, ts, targets) -> dict[str, torch.Tensor]:
    """The textbook definition: one example at a time, autograd's weight gradient, squared, summed."""
    from unlearnd.core.lora import is_conv1d

    acc = {n: torch.zeros_like(weight_matrix(m)) for n, m in targets.items()}
    tokens = 0
    weights = [m.weight for m in targets.values()]
    for w in weights:
        w.requires_grad_(True)
    try:
        for i in range(len(ts)):
            b = ts.select([i])
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
            lp = torch.log_softmax(logits[:, :-1], -1)
            lab = b.labels[:, 1:]
            m = lab != -100
            loss = -(lp.gather(-1, lab.clamp_min(0)[..., None])[..., 0] * m).sum()
            grads = torch.autograd.grad(loss, weights)
            for (n, mod), g in zip(targets.items(), grads, strict=True):
                acc[n] += (g.T if is_conv1d(mod) else g) ** 2
            tokens += int(m.sum())
    finally:
        for w in weights:
            w.requires_grad_(False)
    return {n: a / tokens for n, a in acc.items()}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt_neo", "gpt2"])
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batched_fisher_equals_per_example_squared_gradients_over_tokens(
    arch, batch_size, tiny_world, tiny_loaded, tiny_gpt2_dir
):
    """Batches of unequal lengths (right padding), a batch size that splits the set unevenly, and GPT-2's
    transposed Conv1D weights: every target's Fisher equals the per-example definition."""
    loaded = tiny_loaded if arch == "gpt_neo" else load_model(tiny_gpt2_dir, device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    ts = encode_set(tok, tiny_world.forget[:4] + tiny_world.holdout[:3])
    assert len(set(ts.attention_mask.sum(1).tolist())) > 1  # the batches really are padded
    targets = find_targets(model, default_target_modules(model))
    fisher = diagonal_fisher(model, ts, targets, loaded.device, batch_size=batch_size)
    expected = _per_example_fisher(model, ts, targets)
    for name in targets:
        assert torch.allclose(fisher[name], expected[name], rtol=1e-3, atol=1e-9), name
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
def test_fisher_per_example_memory_budget_does_not_change_the_result(tiny_world, tiny_loaded, monkeypatch):
    """A budget of one example's gradient at a time gives the same Fisher as all at once."""
    from unlearnd.core import fila

    model, tok = tiny_loaded.model, tiny_loaded.tokenizer
    ts = encode_set(tok, tiny_world.forget[:5])
    targets = find_targets(model, ["c_fc"])
    whole = diagonal_fisher(model, ts, targets, tiny_loaded.device, batch_size=5)
    monkeypatch.setattr(fila, "GRADIENT_BUDGET_BYTES", 1)
    chunked = diagonal_fisher(model, ts, targets, tiny_loaded.device, batch_size=5)
    for name in targets:
        assert torch.allclose(whole[name], chunked[name], rtol=1e-5, atol=1e-12)


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
    # The base is untouched; the rank-2r LoRA is [B, −B₀]·[A; A₀] with a non-zero principal part B₀A₀.
    from unlearnd.core import lora

    for name, layer in lora.lora_layers(adapted.model).items():
        assert torch.equal(weight_matrix(layer.base_layer), originals[name])
        a, b = lora.get_factors(layer)
        assert torch.equal(a[:4], a[4:]) and torch.equal(b[:, :4], -b[:, 4:]) and b.abs().max() > 0
    adapted.release()


def test_fisher_groups_respect_the_memory_budget_and_never_split_a_layer(tiny_loaded):
    from unlearnd.core import lora
    from unlearnd.core.unlearn import fisher_groups

    targets = find_targets(tiny_loaded.model, default_target_modules(tiny_loaded.model))
    sizes = {n: 8 * lora.weight_matrix(m).numel() for n, m in targets.items()}
    assert fisher_groups(targets, sum(sizes.values())) == [targets]
    groups = fisher_groups(targets, max(sizes.values()))
    assert [n for g in groups for n in g] == list(targets)  # every layer once, in order
    assert all(sum(sizes[n] for n in g) <= max(sizes.values()) for g in groups) and len(groups) > 1
    assert len(fisher_groups(targets, 1)) == len(targets)  # a layer over budget still gets its own group


@pytest.mark.slow
def test_fila_factors_are_the_same_whatever_the_fisher_memory_budget(tiny_loaded, tiny_world, monkeypatch):
    """Layer groups (one Fisher pass each) change the memory, not the factors."""
    from unlearnd.core import unlearn

    model, tok, device = tiny_loaded.model, tiny_loaded.tokenizer, tiny_loaded.device
    fts, rts = encode_set(tok, tiny_world.forget), encode_set(tok, tiny_world.retain)
    targets = find_targets(model, default_target_modules(model))
    config = fast_config()
    phases = []
    whole = unlearn.fila_init_factors(model, config, targets, fts, rts, device)
    monkeypatch.setattr(unlearn, "FISHER_MEMORY_BYTES", 1)
    grouped = unlearn.fila_init_factors(
        model, config, targets, fts, rts, device, progress=lambda *a: phases.append(a[3].get("groups"))
    )
    assert set(phases) == {len(targets)}
    for name in targets:
        for got, expected in zip(grouped[name], whole[name], strict=True):
            assert torch.allclose(got, expected, atol=1e-5), name


def test_fisher_memory_budget_is_half_the_free_gpu_memory_else_the_constant(monkeypatch):
    from unlearnd.core import unlearn

    assert unlearn.fisher_memory_budget(torch.device("cpu")) == unlearn.FISHER_MEMORY_BYTES
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (40 << 30, 80 << 30))
    assert unlearn.fisher_memory_budget(torch.device("cuda")) == 20 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1 << 20, 80 << 30))
    assert unlearn.fisher_memory_budget(torch.device("cuda")) == 1 << 30  # a floor: no pass per layer
