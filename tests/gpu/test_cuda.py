"""What only a GPU can check: bf16 weights under bf16 autocast, SDPA and flash attention, the Fisher's memory
groups, and the exact export of an adapter trained on bf16 weights. Skipped without CUDA; run on a GPU by
bench/gpu_check.sh (its JSON keeps each measured value, recorded with `record_property`).

Imports only core (the GPU machine has torch, transformers and peft, not the service's dependencies)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A small random Llama (GQA, head_dim 64 as in real ones) and synthetic PII records."""
    import random

    from unlearnd.core.worlds.families import Shape, build_family_dir
    from unlearnd.core.worlds.pii import make_people
    from unlearnd.core.worlds.tokenizer import train_tokenizer

    people = [p.render() for p in make_people(64, random.Random(0))]
    tok = train_tokenizer(people, 1024)
    shape = Shape(hidden=256, layers=2, heads=4, kv_heads=2, intermediate=512, max_positions=256)
    path = build_family_dir("llama", tok, tmp_path_factory.mktemp("gpu") / "llama", shape)
    return path, people


def _records(texts):
    from unlearnd.core.records import Record

    return [Record(text=t) for t in texts]


def _logits(model, ts):
    with torch.inference_mode():
        b = ts.to(CUDA)
        return model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.float()


def test_bf16_job_runs_under_autocast_and_its_adapter_reproduces_it_on_a_fresh_base(
    llama_dir, tmp_path, record_property
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from unlearnd.core.config import UnlearnConfig
    from unlearnd.core.data import encode_set
    from unlearnd.core.device import resolve_precision
    from unlearnd.core.modeling import load_model
    from unlearnd.core.pipeline import run_forget
    from unlearnd.core.serving import adapter_problems

    source, people = llama_dir
    loaded = load_model(source)
    assert loaded.device.type == "cuda" and next(loaded.model.parameters()).dtype == torch.bfloat16
    check = encode_set(loaded.tokenizer, _records(people[:4]))
    seen, trained = set(), []

    def progress(phase, step, total, metrics):
        seen.add(resolve_precision(loaded.device))
        if phase == "exporting" and step == 0:
            trained.append(_logits(loaded.model, check))

    config = UnlearnConfig(method="ihl", init="fila", max_steps=6, eval_every=3, lr=5e-3, eval_max_records=16)
    result = run_forget(
        loaded, _records(people[:8]), _records(people[8:]), [], config, out_dir=tmp_path / "a", progress=progress
    )
    assert seen == {"bf16"} and result.report["steps"] == 6
    fresh = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.bfloat16).to(CUDA).eval()
    reloaded = PeftModel.from_pretrained(fresh, str(result.adapter_dir)).eval()
    mask = check.attention_mask.to(CUDA).bool()
    diff = float((_logits(reloaded, check) - trained[0]).abs()[mask].max())
    record_property("export_max_abs_diff_in_job", result.report["adapter"]["export_max_abs_diff"])
    record_property("fresh_base_max_abs_diff", diff)
    assert result.report["adapter"]["export_max_abs_diff"] <= 1e-3
    assert diff <= 1e-3
    assert adapter_problems(result.adapter_dir, "llama") == []


def test_attention_runs_sdpa_and_the_flash_kernel_and_matches_eager(llama_dir, record_property):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import AutoModelForCausalLM

    from unlearnd.core.data import encode_set
    from unlearnd.core.modeling import load_model

    source, people = llama_dir
    loaded = load_model(source)
    assert loaded.model.config._attn_implementation == "sdpa"
    eager = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.bfloat16, attn_implementation="eager")
    eager = eager.to(CUDA).eval()
    ids = encode_set(loaded.tokenizer, _records(people[:1])).input_ids.to(CUDA)
    with torch.inference_mode():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if the flash kernel cannot run this model
            flash = loaded.model(input_ids=ids).logits.float()
        reference = eager(input_ids=ids).logits.float()
    diff = float((flash - reference).abs().max())
    record_property("flash_vs_eager_max_abs_diff", diff)
    assert diff < 0.1  # bf16 rounding of two different kernels

    padded = encode_set(loaded.tokenizer, _records(people[:6]))  # rows of different lengths: a padding mask
    batch = _logits(loaded.model, padded)
    worst = 0.0
    for i, e in enumerate(padded.encoded):
        alone = _logits(loaded.model, encode_set(loaded.tokenizer, _records(people[i : i + 1])))
        worst = max(worst, float((batch[i, : len(e.ids)] - alone[0]).abs().max()))
    record_property("padded_vs_alone_max_abs_diff", worst)
    assert worst < 0.1


def test_fisher_in_memory_groups_equals_the_fisher_in_one_pass_and_holds_less(llama_dir, record_property):
    from unlearnd.core.data import encode_set
    from unlearnd.core.fila import diagonal_fisher
    from unlearnd.core.modeling import default_target_modules, find_targets, load_model
    from unlearnd.core.unlearn import fisher_groups, fisher_memory_budget

    source, people = llama_dir
    loaded = load_model(source)
    model = loaded.model
    free, _ = torch.cuda.mem_get_info(CUDA)
    assert fisher_memory_budget(CUDA) >= min(1 << 30, free // 2)  # half the free memory
    targets = find_targets(model, default_target_modules(model))
    ts = encode_set(loaded.tokenizer, _records(people[:24]))
    one_group_bytes = sum(2 * 4 * m.weight.numel() for m in targets.values())
    groups = fisher_groups(targets, one_group_bytes // 3)
    assert len(groups) >= 3

    def peak_of(fn):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated()

    def grouped() -> dict:
        # As fila_init_factors does: a group's Fisher is consumed before the next group's is computed (here
        # moved off the GPU), so only one group's accumulators are ever held.
        out = {}
        for g in groups:
            out.update({k: v.cpu() for k, v in diagonal_fisher(model, ts, g, CUDA, batch_size=8).items()})
        return out

    whole, whole_peak = peak_of(lambda: diagonal_fisher(model, ts, targets, CUDA, batch_size=8))
    whole = {k: v.cpu() for k, v in whole.items()}
    torch.cuda.empty_cache()
    parts, parts_peak = peak_of(grouped)
    assert parts.keys() == whole.keys()
    worst = max(float(((parts[k] - whole[k]).abs() / whole[k].abs().max()).max()) for k in whole)
    record_property("grouped_vs_whole_max_rel_diff", worst)
    record_property("peak_bytes_whole_vs_groups", [whole_peak, parts_peak])
    assert worst < 1e-3
    assert parts_peak < whole_peak
