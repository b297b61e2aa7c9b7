"""Adapters a LoRA-serving engine accepts: servable ranks (zero-padded, exactly), projections only, no bias,
no `modules_to_save`; padding is dropped again when a version is read back."""

from __future__ import annotations

import json

import torch

from unlearnd.core.export import Component, read_adapter, write_adapter
from unlearnd.core.serving import SERVING_RANKS, adapter_problems, serving_rank


def _delta(rank: int, modules=("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj")):
    torch.manual_seed(rank)
    return {m: [Component(torch.randn(rank, 6), torch.randn(5, rank), 2.0)] for m in modules}


def test_serving_rank_pads_up_to_the_next_rank_engines_accept():
    assert [serving_rank(r) for r in (1, 8, 9, 16, 48, 80, 257, 320, 321, 512)] == [
        8, 8, 16, 16, 64, 128, 320, 320, 512, 512,
    ]  # fmt: skip
    assert serving_rank(600) == 600  # nothing holds it: adapter_problems says so


def test_a_cumulative_rank_is_padded_exactly_and_read_back_without_the_padding(tmp_path):
    delta = {m: comps + _delta(16)[m] for m, comps in _delta(32).items()}  # rank 48: what version 3 holds
    write_adapter(
        tmp_path, delta, base_model="b", target_modules=["q_proj", "down_proj"], fan_in_fan_out=False, scale=2
    )
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["r"] == 64 and cfg["lora_alpha"] == 128
    assert adapter_problems(tmp_path, "llama") == []
    back, _ = read_adapter(tmp_path)
    for name, comps in delta.items():
        assert back[name][0].a.size(0) == 48  # the zero rows are gone: the next version grows by what it trains
        expected = sum(c.delta() for c in comps)
        assert torch.allclose(back[name][0].delta(), expected, atol=1e-5)


def test_adapter_problems_names_what_an_engine_would_refuse(tmp_path):
    write_adapter(
        tmp_path, _delta(8), base_model="b", target_modules=["q_proj", "down_proj"], fan_in_fan_out=False, scale=2
    )
    assert adapter_problems(tmp_path, "llama") == []
    assert adapter_problems(tmp_path, "phi3") != []  # Phi-3 has fused qkv_proj, no q_proj
    cfg_path = tmp_path / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(r=12, bias="lora_only", modules_to_save=["lm_head"], target_modules=["q_proj", "embed_tokens"])
    cfg_path.write_text(json.dumps(cfg))
    problems = " | ".join(adapter_problems(tmp_path, "llama"))
    for word in ("rank 12", "bias", "modules_to_save", "embed_tokens"):
        assert word in problems
    assert 320 in SERVING_RANKS and 12 not in SERVING_RANKS
