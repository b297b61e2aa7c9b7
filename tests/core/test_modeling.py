"""Loading a local causal LM: the fused activation swap keeps the model's outputs."""

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.activations import GELUTanh, NewGELUActivation

from unlearnd.core.data import encode_set
from unlearnd.core.modeling import load_model


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt_neo", "gpt2"])
def test_load_model_fuses_gelu_new_without_changing_the_outputs(arch, tiny_world, tiny_gpt2_dir):
    source = tiny_world.model_dir if arch == "gpt_neo" else tiny_gpt2_dir
    loaded = load_model(source, device="cpu")
    plain = AutoModelForCausalLM.from_pretrained(str(source)).eval()
    assert any(isinstance(m, NewGELUActivation) for m in plain.modules())
    assert not any(isinstance(m, NewGELUActivation) for m in loaded.model.modules())
    assert sum(isinstance(m, GELUTanh) for m in loaded.model.modules()) == plain.config.num_hidden_layers
    ts = encode_set(loaded.tokenizer, tiny_world.forget[:4])
    with torch.inference_mode():
        got = loaded.model(input_ids=ts.input_ids, attention_mask=ts.attention_mask).logits
        expected = plain(input_ids=ts.input_ids, attention_mask=ts.attention_mask).logits
    assert torch.allclose(got, expected, atol=1e-4)
