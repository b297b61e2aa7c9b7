"""The architecture matrix: every family users bring, as a tiny random model built from its config.

For each: the family's default LoRA targets exist, FILA at step 0 reproduces the model, a job runs to the end,
the exported adapter reloaded with peft on a fresh base from disk reproduces the trained model (fp32 weights and
bf16 weights), and a LoRA-serving engine would load it. The model directories carry what real checkpoints do:
no pad token (Llama 3 base), sharded safetensors (every large checkpoint), tied embeddings (Qwen 2.5 small,
Gemma 2), a `generation_config.json` with sampling defaults (chat models).
"""

from __future__ import annotations

import json

import pytest
import torch

from unlearnd.core.config import UnlearnConfig
from unlearnd.core.data import encode_set
from unlearnd.core.modeling import default_target_modules, find_targets, fuse_activations, load_model
from unlearnd.core.pipeline import run_forget
from unlearnd.core.serving import adapter_problems
from unlearnd.core.unlearn import adapt
from unlearnd.core.worlds.families import FAMILIES, build_family_dir

# What each family's directory carries besides its architecture.
VARIANTS: dict[str, dict] = {
    "llama": {"pad_token": False},
    "mistral": {"shard_bytes": 200_000},
    "qwen3": {"generation": {"do_sample": True, "temperature": 0.7, "top_p": 0.8}},
}
TIED = {"qwen2", "gemma2"}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory, tiny_world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_world.model_dir))
    root = tmp_path_factory.mktemp("families")
    return {f: build_family_dir(f, tok, root / f, **VARIANTS.get(f, {})) for f in FAMILIES}


def _logits(model, ts) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ts.input_ids, attention_mask=ts.attention_mask).logits.float()


def _max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float((a - b).abs()[mask.bool()].max())


def test_model_directories_carry_what_real_checkpoints_do(family_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(family_dirs["llama"])).pad_token is None
    shards = sorted(p.name for p in family_dirs["mistral"].glob("*.safetensors"))
    assert len(shards) >= 2 and (family_dirs["mistral"] / "model.safetensors.index.json").is_file()
    generation = json.loads((family_dirs["qwen3"] / "generation_config.json").read_text())
    assert generation["do_sample"] is True
    for family in TIED:
        model = AutoModelForCausalLM.from_pretrained(str(family_dirs[family]))
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    phi3 = AutoModelForCausalLM.from_pretrained(str(family_dirs["phi3"]))
    assert {"qkv_proj", "gate_up_proj"} <= {n.rsplit(".", 1)[-1] for n, _ in phi3.named_modules()}
    llama = AutoModelForCausalLM.from_pretrained(str(family_dirs["llama"]))
    assert llama.config.num_key_value_heads < llama.config.num_attention_heads  # grouped-query attention


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_fila_at_step_zero_reproduces_the_model(family, family_dirs, tiny_world):
    loaded = load_model(family_dirs[family], device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    assert tok.pad_token_id is not None  # a tokenizer without one pads with EOS
    targets = find_targets(model, default_target_modules(model))
    names = {n.rsplit(".", 1)[-1] for n in targets}
    assert names == set(default_target_modules(model))  # every default target exists in the family
    assert len(targets) == len(names) * model.config.num_hidden_layers or family == "gpt2"  # GPT-2: c_proj twice
    check = encode_set(tok, tiny_world.forget + tiny_world.holdout[:4])
    before = _logits(model, check)
    config = UnlearnConfig(method="ihl", init="fila", rank=4, alpha=8)
    forget_ts, retain_ts = encode_set(tok, tiny_world.forget), encode_set(tok, tiny_world.retain[:16])
    adapted = adapt(model, config, targets, forget_ts, retain_ts, loaded.device)
    try:
        at_zero = _logits(adapted.model, check)
        factors = [layer.lora_A["default"].weight.detach() for layer in _lora_layers(adapted.model)]
    finally:
        adapted.release()
    assert all(float(a[:4].abs().max()) > 0 for a in factors)  # FILA wrote real directions
    assert _max_diff(at_zero, before, check.attention_mask) <= 1e-4


def _lora_layers(model):
    from unlearnd.core.lora import lora_layers

    return list(lora_layers(model).values())


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_job_exports_a_servable_adapter_that_a_fresh_base_reproduces(family, dtype, family_dirs, tiny_world, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    source = family_dirs[family]
    loaded = load_model(source, device="cpu", dtype=dtype)
    check = encode_set(loaded.tokenizer, tiny_world.forget[:3] + tiny_world.holdout[:3])
    trained: list[torch.Tensor] = []

    def progress(phase, step, total, metrics):
        if phase == "exporting" and step == 0:  # the job's trained model, before its LoRA is removed
            trained.append(_logits(loaded.model, check))

    base_before = _logits(loaded.model, check)
    config = UnlearnConfig(
        method="ihl",
        init="fila",
        max_steps=3,
        eval_every=100,
        lr=5e-3,
        eval_max_records=8,
        precision="bf16" if dtype == torch.bfloat16 else "fp32",
    )
    result = run_forget(
        loaded, tiny_world.forget, tiny_world.retain, [], config, out_dir=tmp_path / "adapter", progress=progress
    )
    assert result.report["steps"] == 3 and result.adapter_dir is not None
    assert result.report["adapter"]["export_max_abs_diff"] <= 1e-4
    assert _max_diff(_logits(loaded.model, check), base_before, check.attention_mask) == 0.0  # base handed back
    (trained_logits,) = trained
    assert _max_diff(trained_logits, base_before, check.attention_mask) > 1e-3  # the job changed the model

    fresh = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype).eval()
    # The job's model runs GPT-2/GPT-Neo's `gelu_new` as torch's fused kernel (core/modeling.py): in bf16 the
    # stock Python formula rounds differently (8e-3 in these logits), which is the activation, not the export.
    fuse_activations(fresh)
    reloaded = PeftModel.from_pretrained(fresh, str(result.adapter_dir)).eval()
    assert _max_diff(_logits(reloaded, check), trained_logits, check.attention_mask) <= 1e-4
    assert adapter_problems(result.adapter_dir, fresh.config.model_type) == []
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["r"] == 2 * config.rank
