"""The exported adapter applies to the *unmodified* base: loading it with peft on a fresh base model from
disk reproduces the trained model (DESIGN §5)."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tests.conftest import fast_config
from unlearnd.core.config import UnlearnConfig
from unlearnd.core.data import encode_set
from unlearnd.core.errors import InvalidInput
from unlearnd.core.export import Component, rank_of, read_adapter, write_adapter
from unlearnd.core.lora import is_conv1d
from unlearnd.core.modeling import default_target_modules, find_targets, load_model
from unlearnd.core.pipeline import run_forget
from unlearnd.core.serving import serving_rank
from unlearnd.core.unlearn import adapt, train


def _logits(model, ts):
    with torch.inference_mode():
        return model(input_ids=ts.input_ids, attention_mask=ts.attention_mask).logits


@pytest.mark.slow
@pytest.mark.parametrize("init", ["fila", "lora"])
@pytest.mark.parametrize("arch", ["gpt_neo", "gpt2"])
def test_fresh_base_plus_exported_adapter_reproduces_trained_logits(arch, init, tiny_world, tiny_gpt2_dir, tmp_path):
    source = tiny_world.model_dir if arch == "gpt_neo" else tiny_gpt2_dir
    loaded = load_model(source, device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    forget_ts = encode_set(tok, tiny_world.forget)
    retain_ts = encode_set(tok, tiny_world.retain[:16])
    check = encode_set(tok, tiny_world.forget + tiny_world.holdout[:4])
    config = fast_config(method="ihl", init=init, rank=4, alpha=8, lr=5e-3, max_steps=5, eval_every=100)
    base_logits = _logits(model, check)
    targets = find_targets(model, default_target_modules(model))
    adapted = adapt(model, config, targets, forget_ts, retain_ts, loaded.device)
    train(adapted, forget_ts, retain_ts, config, loaded.device, rule=None)
    trained = _logits(adapted.model, check)
    assert (trained - base_logits).abs().max() > 1e-2  # training really changed the model

    out = tmp_path / "adapter"
    write_adapter(
        out,
        adapted.delta(),
        base_model=str(source),
        target_modules=default_target_modules(model),
        fan_in_fan_out=any(is_conv1d(m) for m in targets.values()),
        scale=config.scaling,
    )
    fresh = AutoModelForCausalLM.from_pretrained(str(source), attn_implementation="eager").eval()
    reloaded = PeftModel.from_pretrained(fresh, str(out)).eval()
    got = _logits(reloaded, check)
    mask = check.attention_mask.bool()
    assert (got - trained).abs()[mask].max().item() <= 1e-4

    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["bias"] == "none" and not cfg.get("modules_to_save")
    assert cfg["base_model_name_or_path"] == str(source)
    trained_rank = 2 * config.rank if init == "fila" else config.rank  # FILA: the rank-2r conversion
    assert cfg["r"] == serving_rank(trained_rank)  # zero-padded to a rank serving engines accept
    assert cfg["lora_alpha"] == pytest.approx(cfg["r"] * config.scaling)
    assert (out / "adapter_model.safetensors").is_file()


def test_components_with_different_scales_export_exactly(tmp_path):
    torch.manual_seed(0)
    delta = {
        "layer": [
            Component(torch.randn(2, 5), torch.randn(4, 2), 0.5),
            Component(torch.randn(3, 5), torch.randn(4, 3), 3.0),
        ]
    }
    write_adapter(tmp_path, delta, base_model="x", target_modules=["layer"], fan_in_fan_out=False, scale=2.0)
    back, cfg = read_adapter(tmp_path)
    expected = sum(c.delta() for c in delta["layer"])
    assert cfg["r"] == 8  # rank 5, zero-padded to the next rank serving engines accept
    assert back["layer"][0].a.size(0) == 5  # the padding is dropped when read back
    assert torch.allclose(back["layer"][0].delta(), expected, atol=1e-5)


def _request_pair(loaded, world, config, tmp, second=None):
    """Request 1 (three people) → version 1; request 2 (the others) → cumulative version 2 on it (with the
    `second` config when given)."""
    v1 = run_forget(loaded, world.forget[:3], world.retain, world.holdout, config, out_dir=tmp / "v1")
    v2 = run_forget(
        loaded,
        world.forget[3:],
        world.retain,
        world.holdout,
        second or config,
        out_dir=tmp / "v2",
        previous_adapter=v1.adapter_dir,
    )
    return v1, v2


@pytest.fixture(scope="module")
def two_versions(tiny_loaded, tiny_world, tmp_path_factory):
    config = fast_config()
    v1, v2 = _request_pair(tiny_loaded, tiny_world, config, tmp_path_factory.mktemp("versions"))
    fresh = AutoModelForCausalLM.from_pretrained(str(tiny_world.model_dir), attn_implementation="eager").eval()
    model = PeftModel.from_pretrained(fresh, str(v2.adapter_dir)).eval()
    return config, v1, v2, model


def _metrics(model, tokenizer, records):
    from unlearnd.core.metrics import evaluate_set

    return evaluate_set(model, encode_set(tokenizer, records), torch.device("cpu")).metrics


@pytest.mark.slow
def test_cumulative_version_forgets_both_requests_from_disk(two_versions, tiny_loaded, tiny_world):
    config, v1, v2, model = two_versions
    assert v1.outcome == v2.outcome == "forgotten"
    assert v1.report["adapter"]["rank"] == 2 * config.rank
    assert v2.report["adapter"]["rank"] == 4 * config.rank and v2.report["adapter"]["parent_rank"] == 2 * config.rank
    for r in (v1, v2):
        assert r.report["adapter"]["export_max_abs_diff"] <= 1e-4
    # the anchor is the original model (KL on retained and never-seen records), whatever the version count
    assert v2.report["retain_term"] == "kl_to_original_model"
    forget = tiny_world.forget
    assert _metrics(model, tiny_loaded.tokenizer, forget).extraction == 0.0
    # request 2 is at the never-seen level in version 2, as its own verdict measured
    never_seen = v2.report["after"]["holdout"]["ma"]
    assert _metrics(model, tiny_loaded.tokenizer, forget[3:]).ma <= never_seen + 0.05
    # request 1 extracts nothing in version 2 (its MA: the strict xfail below)
    assert _metrics(model, tiny_loaded.tokenizer, forget[:3]).extraction == 0.0


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="known gap (issue 11, closing note): training version 2 on request 2 re-teaches request 1 part of what "
    "it forgot (tiny world: MA 0.34 after v1 → 0.52-0.62 in v2, holdout 0.39-0.40) with either anchor (original "
    "or previous version), without the top-1 hinge, with a 10x anchor, or with an O-LoRA orthogonality penalty; "
    "its records are purged, so the job cannot see it. Strict: this fails loudly once the gap is closed.",
)
def test_an_earlier_request_stays_at_the_never_seen_level_in_a_later_version(two_versions, tiny_loaded, tiny_world):
    _, v1, _, model = two_versions
    never_seen = v1.report["after"]["holdout"]["ma"]
    assert _metrics(model, tiny_loaded.tokenizer, tiny_world.forget[:3]).ma <= never_seen + 0.05


@pytest.mark.slow
def test_a_version_beyond_the_rank_bound_compacts_its_starting_version_and_exports_exactly(
    tiny_loaded, tiny_world, tmp_path
):
    """Version 1 has rank 8 (rank 4, FILA); a job of rank 4 (rank 2, FILA) under a bound of 8 first compacts
    version 1 to 8 − 4 = 4 — truncated SVD of its ΔW, repaired by distilling it — and trains on top, so
    version 2 is within the bound as trained: the verdict and the after-report are measured on the very model
    base + exported adapter reproduces, with no truncation after the loop."""
    first = fast_config(rank=4, alpha=8)
    second = fast_config(rank=2, alpha=4, max_adapter_rank=8, compaction_steps=20)
    v1, v2 = _request_pair(tiny_loaded, tiny_world, first, tmp_path, second)
    assert v1.report["adapter"]["rank"] == 8 and "compaction" not in v1.report["adapter"]
    assert v2.outcome == "forgotten"
    info = v2.report["adapter"]
    assert info["rank"] == 8 and info["parent_rank"] == 8
    c = info["compaction"]
    assert c["rank_before"] == 8 and c["rank"] == 4 and 0.0 < c["energy_discarded"] < 1.0
    assert c["worst_module_energy_discarded"] >= c["energy_discarded"]
    assert set(c["kl_after_repair"]) == {"retain", "holdout", "forget"}
    assert sum(c["kl_after_repair"].values()) <= sum(c["kl_before_repair"].values())  # never worse (reverted)
    assert info["export_max_abs_diff"] <= 1e-4
    delta, cfg = read_adapter(v2.adapter_dir)
    assert cfg["r"] == 8 and rank_of(delta) == 8
    # the after-report is the published model's: its forget MA, recomputed from disk with peft
    fresh = AutoModelForCausalLM.from_pretrained(str(tiny_world.model_dir), attn_implementation="eager").eval()
    model = PeftModel.from_pretrained(fresh, str(v2.adapter_dir)).eval()
    ma = _metrics(model, tiny_loaded.tokenizer, tiny_world.forget[3:]).ma
    assert ma == pytest.approx(v2.report["after"]["forget"]["ma"], abs=1e-6)


def test_the_rank_bound_must_leave_the_previous_version_at_least_one_jobs_rank():
    with pytest.raises(InvalidInput, match="max_adapter_rank=8 must be at least twice"):
        UnlearnConfig(rank=8, init="lora", max_adapter_rank=8)
    with pytest.raises(InvalidInput, match="× 2 for FILA"):
        UnlearnConfig(rank=8, init="fila", max_adapter_rank=16)
    assert UnlearnConfig(rank=8, init="lora", max_adapter_rank=16).job_rank == 8
    assert UnlearnConfig(rank=8, init="full", max_adapter_rank=8).init == "full"  # no adapter, no bound


@pytest.mark.slow
def test_a_repair_that_moves_away_from_the_uncompressed_model_is_reverted_to_the_truncation(tiny_world):
    """Compaction's repair may only bring the compact model closer to the uncompressed one: a repair that does
    not (here forced with a learning rate of 1) is undone, and the version is the truncated SVD as it was."""
    from unlearnd.core import lora
    from unlearnd.core.compaction import COMPACT, compact, truncate

    loaded = load_model(tiny_world.model_dir, device="cpu")  # its own copy: peft layers are injected in place
    model, tok, device = loaded.model, loaded.tokenizer, loaded.device
    names = default_target_modules(model)
    targets = find_targets(model, names)
    peft_model = lora.wrap(model, 8, 8.0, sorted({n.rsplit(".", 1)[-1] for n in targets}), False, seed=0)
    gen = torch.Generator().manual_seed(0)
    delta = {}
    for name, layer in lora.lora_layers(peft_model).items():
        a = torch.randn(layer.lora_A["default"].weight.shape, generator=gen) * 0.05
        b = torch.randn(layer.lora_B["default"].weight.shape, generator=gen) * 0.05
        lora.set_factors(layer, a, b)
        delta[name] = [Component(a, b, lora.scaling_of(layer))]
    sets = {"retain": encode_set(tok, tiny_world.retain[:16]), "holdout": encode_set(tok, tiny_world.holdout[:8])}
    compacted, report = compact(peft_model, delta, 4, sets, device, steps=5, lr=1.0)
    assert not report.repair_kept
    assert report.kl_after_repair == pytest.approx(report.kl_before_repair, abs=1e-6)
    truncated, _, _ = truncate(delta, 4)
    for name, layer in lora.lora_layers(peft_model).items():
        a, b = lora.get_factors(layer, COMPACT)
        (comp,) = truncated[name]
        assert torch.allclose(b @ a, comp.b @ comp.a, atol=1e-6)
        (c,) = compacted[name]
        assert torch.allclose(c.delta(), comp.delta(), atol=1e-6)
