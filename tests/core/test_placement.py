"""A model larger than one GPU: decoder layers split across a worker's devices, with accelerate's hooks moving
activations between them. Tested on two "devices" of one CPU (accelerate places and hooks them as it would two
GPUs): the placed model computes the same logits, and a job on it makes the same Fisher, FILA and adapter."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from unlearnd.core.config import UnlearnConfig
from unlearnd.core.data import encode_set
from unlearnd.core.modeling import load_model
from unlearnd.core.pipeline import run_forget
from unlearnd.core.placement import is_dispatched, plan_device_map
from unlearnd.core.worlds.families import Shape, family_config


def _skeleton(family: str, layers: int = 4):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(family_config(family, 128, Shape(layers=layers)))


def test_plan_splits_the_layers_evenly_and_keeps_the_ends_with_their_neighbours():
    plan = plan_device_map(_skeleton("llama"), [0, 1])
    assert [plan[f"model.layers.{i}"] for i in range(4)] == [0, 0, 1, 1]
    assert plan["model.embed_tokens"] == 0 and plan["model.norm"] == 1 and plan["lm_head"] == 1
    tied = plan_device_map(_skeleton("qwen2"), [0, 1, 2])
    assert tied["lm_head"] == 0  # a tied head is the embeddings' weight: it stays with them
    assert [tied[f"model.layers.{i}"] for i in range(4)] == [0, 0, 1, 2]
    gpt2 = plan_device_map(_skeleton("gpt2"), ["cuda:0", "cuda:1"])
    assert gpt2["transformer.wte"] == "cuda:0" and gpt2["transformer.ln_f"] == "cuda:1"
    neox = plan_device_map(_skeleton("gpt_neox"), [0, 1])
    assert neox["gpt_neox.embed_in"] == 0 and neox["lm_head"] == 1 and neox["gpt_neox.final_layer_norm"] == 1
    for family in ("llama", "gpt2", "gpt_neox", "phi3"):  # every parameter has a device
        skeleton = _skeleton(family)
        placed = plan_device_map(skeleton, [0, 1])
        for name, _ in skeleton.named_parameters():
            assert any(name == k or name.startswith(f"{k}.") for k in placed), name


@pytest.mark.slow
def test_a_job_on_a_model_placed_across_two_devices_makes_the_same_adapter(tiny_world, tmp_path):
    from transformers import AutoTokenizer

    from unlearnd.core.worlds.families import build_family_dir

    tok = AutoTokenizer.from_pretrained(str(tiny_world.model_dir))
    source = build_family_dir("llama", tok, tmp_path / "llama", Shape(layers=4))
    whole = load_model(source, device="cpu")
    placed = load_model(source, devices=["cpu", "cpu"])
    assert not is_dispatched(whole.model) and is_dispatched(placed.model)
    assert placed.model.model.layers[3]._hf_hook.execution_device == "cpu"
    check = encode_set(tok, tiny_world.forget)
    with torch.inference_mode():
        a = whole.model(input_ids=check.input_ids, attention_mask=check.attention_mask).logits
        b = placed.model(input_ids=check.input_ids, attention_mask=check.attention_mask).logits
    assert torch.equal(a, b)

    config = UnlearnConfig(method="ihl", init="fila", max_steps=3, eval_every=100, lr=5e-3, eval_max_records=8)
    results = [
        run_forget(m, tiny_world.forget, tiny_world.retain, [], config, out_dir=tmp_path / name)
        for name, m in (("whole", whole), ("placed", placed))
    ]
    for r in results:
        assert r.report["adapter"]["export_max_abs_diff"] <= 1e-4 and r.report["steps"] == 3
    one, two = (load_file(str(r.adapter_dir / "adapter_model.safetensors")) for r in results)
    assert one.keys() == two.keys()
    for key in one:  # Fisher, FILA and the steps are the same computation, wherever the layers live
        assert torch.allclose(one[key], two[key], atol=1e-5), key
    assert is_dispatched(placed.model)  # the job hands the placed model back placed
