"""The unlearning loop and pipeline on the tiny world: stopping rule, retention, determinism, cancel,
progress, restoration of the (cacheable) base model."""

import pytest
import torch

from tests.conftest import fast_config
from unlearnd.core.config import INITS, METHODS, UnlearnConfig
from unlearnd.core.errors import Cancelled, InvalidInput
from unlearnd.core.modeling import load_model
from unlearnd.core.pipeline import run_forget

pytestmark = pytest.mark.slow


def _probe_logits(loaded):
    ids = torch.tensor([[loaded.tokenizer.bos_token_id, 40, 41, 42, 43, 44]])
    with torch.inference_mode():
        return loaded.model(input_ids=ids).logits.clone()


@pytest.fixture(scope="module")
def default_run(tiny_loaded, tiny_world, tmp_path_factory):
    """The default method (ctd + FILA) on the tiny world."""
    phases = []
    result = run_forget(
        tiny_loaded,
        tiny_world.forget,
        tiny_world.retain,
        tiny_world.holdout,
        fast_config(),
        out_dir=tmp_path_factory.mktemp("ctd"),
        progress=lambda ph, s, t, m: phases.append(ph),
    )
    return result, phases


def test_the_default_method_reaches_the_verdict_and_keeps_the_model(default_run):
    result, _ = default_run
    r = result.report
    assert result.outcome == "forgotten" and result.reached and 0 < r["steps"] <= 160
    assert r["before"]["forget"]["extraction"] >= 0.8 and r["after"]["forget"]["extraction"] == 0.0
    after = r["verdict"]["after"]
    assert after["indistinguishable"] and after["failed"] == []
    for score in ("loss", "zlib", "min_k"):
        evidence = after["scores"][score]
        assert 0.4 <= evidence["auc"] <= 0.6 and evidence["p_value"] >= 0.05
        assert evidence["auc_low"] <= evidence["auc"] <= evidence["auc_high"]
        assert r["before"]["mia"][f"{score}_auc"] > 0.9  # memorised records were obvious members before
    assert r["after"]["forget"]["ma"] <= r["after"]["holdout"]["ma"]
    assert r["verdict"]["utility"]["kept"]
    assert r["after"]["retain"]["ma"] >= r["original"]["retain"]["ma"] - 0.03
    assert r["history"][-1]["failed"] == []
    assert r["adapter"]["export_max_abs_diff"] <= 1e-4


def test_report_has_every_metric_before_and_after(default_run):
    r = default_run[0].report
    for when in ("before", "after"):
        for s in ("forget", "retain", "holdout"):
            assert set(r[when][s]) == {
                "n",
                "ma",
                "el10",
                "extraction",
                "extraction_short",
                "extraction_half",
                "perplexity",
            }
        assert set(r[when]["mia"]) == {"loss_auc", "zlib_auc", "min_k_auc"}
    assert r["trainable_params"] > 0 and r["wall_seconds"] > 0
    assert set(r["verdict"]) == {"outcome", "bounds", "before", "after", "requests", "utility"}
    assert r["verdict"]["before"]["failed"]  # memorised: distinguishable before any step


def test_progress_reports_every_phase_in_order(default_run):
    phases = default_run[1]
    order = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    assert order == ["evaluating", "fisher", "unlearning", "evaluating", "exporting"]


def test_a_run_that_collapses_the_model_is_not_certified(default_run, tiny_loaded, tiny_world, tmp_path):
    """Gradient ascent on every weight forgets by breaking the model: the holdout collapses with it, so a rule
    comparing the two alone would certify it. The utility half of the verdict does not."""
    ga = run_forget(
        tiny_loaded,
        tiny_world.forget,
        tiny_world.retain,
        tiny_world.holdout,
        fast_config(method="ga", init="full", max_steps=12, eval_every=4, lr=1e-3),
        out_dir=tmp_path / "ga",
    )
    assert ga.report["after"]["forget"]["extraction"] == 0.0  # the records are gone...
    assert ga.outcome != "forgotten" and not ga.report["verdict"]["utility"]["kept"]  # ...and so is the model
    assert ga.report["after"]["retain"]["ma"] < default_run[0].report["after"]["retain"]["ma"] - 0.2


def test_records_the_model_never_knew_get_no_version(tiny_loaded, tiny_world, tmp_path):
    """Never-seen people are as unfamiliar as never-seen people: nothing to unlearn, and no adapter."""
    holdout = tiny_world.holdout
    r = run_forget(tiny_loaded, holdout[:4], tiny_world.retain, holdout[4:], fast_config(), out_dir=tmp_path / "n")
    assert r.outcome == "not_memorised" and r.adapter_dir is None and r.report["steps"] == 0
    assert r.report["verdict"]["before"]["indistinguishable"] and r.report["after"] is None
    assert not (tmp_path / "n" / "adapter_model.safetensors").exists()


def test_same_seed_same_adapter_and_model_restored(tiny_loaded, tiny_world, tmp_path):
    before = _probe_logits(tiny_loaded)
    cfg = fast_config(method="ihl", max_steps=6, eval_every=100)
    a = run_forget(tiny_loaded, tiny_world.forget, tiny_world.retain, [], cfg, out_dir=tmp_path / "a")
    b = run_forget(tiny_loaded, tiny_world.forget, tiny_world.retain, [], cfg, out_dir=tmp_path / "b")
    assert a.report["adapter"]["weights_sha256"] == b.report["adapter"]["weights_sha256"]
    assert torch.equal(_probe_logits(tiny_loaded), before)
    # without a holdout set the verdict cannot be tested: the budget runs out and nothing is claimed
    assert a.outcome == "unverified" and a.report["verdict"]["after"] is None
    assert not a.reached and a.report["steps"] == 6
    with pytest.raises(InvalidInput, match="holdout"):  # ctd calibrates against the holdout: it needs one
        run_forget(tiny_loaded, tiny_world.forget, tiny_world.retain, [], fast_config(), out_dir=tmp_path / "c")


def test_cancel_between_steps_restores_the_model(tiny_loaded, tiny_world, tmp_path):
    before = _probe_logits(tiny_loaded)
    calls = {"n": 0}

    def should_cancel():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        run_forget(
            tiny_loaded,
            tiny_world.forget,
            tiny_world.retain,
            tiny_world.holdout,
            fast_config(max_steps=50, eval_every=100),
            out_dir=tmp_path / "c",
            should_cancel=should_cancel,
        )
    assert not (tmp_path / "c" / "adapter_model.safetensors").exists()
    assert torch.equal(_probe_logits(tiny_loaded), before)
    assert type(tiny_loaded.model).__name__ == "GPTNeoForCausalLM"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("init", INITS)
def test_every_method_and_init_runs_and_exports(method, init, tiny_loaded, tiny_world, tmp_path):
    before = _probe_logits(tiny_loaded)
    # restore distils a checkpoint: here a second copy of the same weights
    teacher = load_model(tiny_world.model_dir) if method == "restore" else None
    r = run_forget(
        tiny_loaded,
        tiny_world.forget[:2],
        tiny_world.retain[:20],
        tiny_world.holdout[:6],
        fast_config(
            method=method,
            init=init,
            max_steps=3,
            eval_every=100,
            retain_batch_size=4,
            restore_from="checkpoint" if method == "restore" else None,
        ),
        out_dir=tmp_path / "out",
        teacher=teacher,
    )
    assert r.report["steps"] >= 1
    if init == "full":
        assert r.adapter_dir is None and (tmp_path / "out" / "config.json").is_file()
    else:
        assert r.report["adapter"]["export_max_abs_diff"] <= 1e-4
    assert torch.allclose(_probe_logits(tiny_loaded), before, atol=0)


def test_bad_inputs_raise_clear_errors(tiny_loaded, tiny_world, tmp_path):
    with pytest.raises(InvalidInput, match="empty"):
        run_forget(tiny_loaded, [], tiny_world.retain, tiny_world.holdout, fast_config(), out_dir=tmp_path)
    with pytest.raises(InvalidInput, match="target modules"):
        run_forget(tiny_loaded, tiny_world.forget, [], [], fast_config(target_modules=["nope"]), out_dir=tmp_path)
    with pytest.raises(InvalidInput, match="unknown method"):
        UnlearnConfig(method="sgd")
    with pytest.raises(InvalidInput, match="rank"):
        UnlearnConfig(rank=0)
    restore = fast_config(method="restore", restore_from="checkpoint")
    with pytest.raises(InvalidInput, match="not loaded"):
        run_forget(tiny_loaded, tiny_world.forget, [], [], restore, out_dir=tmp_path)
    with pytest.raises(InvalidInput, match="the model itself"):  # it would be trained while it teaches
        run_forget(tiny_loaded, tiny_world.forget, [], [], restore, out_dir=tmp_path, teacher=tiny_loaded)


def test_stopping_checks_decode_only_once_the_scores_pass(default_run):
    """EL and extraction need greedy decodes; while a membership score still tells the sets apart the verdict
    cannot hold, so the decode is skipped (history records EL as None). Step 0 is judged on the before-report's
    evaluation of the same model, which decoded: its EL is the before-report's."""
    r = default_run[0].report
    cheap = {"el", "extraction", "retain_ma_drop", "retain_extraction_kept", "perplexity_ratio"}
    for h in r["history"][1:]:
        if set(h["failed"]) - cheap:
            assert h["forget_el"] is None
    first = r["history"][0]
    assert set(first["failed"]) - cheap and first["forget_el"] == pytest.approx(r["before"]["forget"]["el10"])
    assert r["history"][-1]["forget_el"] is not None


def test_checks_far_from_the_band_skip_the_holdout_and_the_passing_one_rescores_it(default_run):
    """The stopping rule's screen: while the forget scores, against the last check's holdout, put an AUC more
    than the margin above the band, the check fails without re-scoring the holdout (history marks it); step 0
    and the passing check score the holdout now."""
    r = default_run[0].report
    ceiling = 0.5 + 0.1 + 0.15  # the default band and screen margin
    screened = [h for h in r["history"] if h.get("screened")]
    assert screened, "the first checks after step 0 are far from the band on the tiny world"
    for h in screened:
        assert max(h[f"{s}_auc"] for s in ("loss", "zlib", "min_k")) > ceiling
        assert h["failed"]
    assert not r["history"][0].get("screened") and not r["history"][-1].get("screened")


def test_one_forward_over_forget_and_retain_rows_equals_two_separate_passes(tiny_loaded, tiny_world):
    """The loop's fused forward (core.data.concat): each set's logits on its own positions, as if alone."""
    from unlearnd.core.data import IGNORE, concat, encode_set

    model, tok = tiny_loaded.model, tiny_loaded.tokenizer
    fb = encode_set(tok, tiny_world.forget[:3])
    rb = encode_set(tok, [tiny_world.retain[0], tiny_world.holdout[0]])
    rb = rb.select([0, 1])
    both = concat([fb, rb])
    assert both.input_ids.size(0) == 5 and (both.labels[both.attention_mask == 0] == IGNORE).all()
    with torch.inference_mode():
        fused = model(input_ids=both.input_ids, attention_mask=both.attention_mask).logits
        for part, rows in ((fb, slice(0, 3)), (rb, slice(3, 5))):
            alone = model(input_ids=part.input_ids, attention_mask=part.attention_mask).logits
            real = part.attention_mask.bool()
            got = fused[rows, : part.input_ids.size(1)]
            assert torch.allclose(got[real], alone[real], atol=1e-5)


def test_fila_trains_only_the_first_half_and_exports_exactly_on_bf16_weights(tiny_world, tmp_path):
    """The GPU's path on a CPU: bf16 base weights, bf16 autocast. FILA's frozen half does not move and the base
    is never written, so base + exported adapter is the trained model (it was 0.16 off in the logits when the
    residual was written into the bf16 weights)."""
    from unlearnd.core import lora
    from unlearnd.core.data import encode_set
    from unlearnd.core.modeling import default_target_modules, find_targets, load_model
    from unlearnd.core.unlearn import adapt, train

    loaded = load_model(tiny_world.model_dir, device="cpu", dtype=torch.bfloat16)
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    config = fast_config(method="ihl", precision="bf16", rank=4, alpha=8, max_steps=6)
    fts, rts = encode_set(loaded.tokenizer, tiny_world.forget), encode_set(loaded.tokenizer, tiny_world.retain)
    targets = find_targets(loaded.model, default_target_modules(loaded.model))
    adapted = adapt(loaded.model, config, targets, fts, rts, loaded.device)
    start = {n: lora.get_factors(layer) for n, layer in lora.lora_layers(adapted.model).items()}
    loop = train(adapted, fts, rts, config, loaded.device, rule=None)
    assert loop.steps == 6 and loop.trainable_params == sum(
        4 * sum(weight.shape) for weight in (lora.weight_matrix(m) for m in targets.values())
    )
    moved = 0.0
    for name, layer in lora.lora_layers(adapted.model).items():
        a, b = lora.get_factors(layer)
        assert torch.equal(a[4:], start[name][0][4:]) and torch.equal(b[:, 4:], start[name][1][:, 4:])
        moved = max(moved, (a[:4] - start[name][0][:4]).abs().max().item())
    assert moved > 0
    adapted.release()

    r = run_forget(
        loaded,
        tiny_world.forget,
        tiny_world.retain,
        tiny_world.holdout,
        fast_config(precision="bf16"),
        out_dir=tmp_path / "v",
    )
    assert r.outcome == "forgotten" and r.report["after"]["forget"]["extraction"] == 0.0
    assert r.report["adapter"]["export_max_abs_diff"] <= 1e-3
    # A cumulative version on bf16 weights: the previous components are frozen LoRA rows, not merged into
    # the weights (the merge put version 2's export 0.09 off in the logits).
    v2 = run_forget(
        loaded,
        tiny_world.retain[:3],
        tiny_world.retain[3:],
        tiny_world.holdout,
        fast_config(precision="bf16", max_steps=4),
        out_dir=tmp_path / "v2",
        previous_adapter=r.adapter_dir,
    )
    assert v2.report["adapter"]["parent_rank"] == 16 and v2.report["adapter"]["rank"] == 32
    assert v2.report["adapter"]["export_max_abs_diff"] <= 1e-3
    assert all(torch.equal(p, before[n]) for n, p in loaded.model.named_parameters())


def test_a_job_serving_several_requests_gives_each_its_own_verdict(tiny_loaded, tiny_world, tmp_path):
    """A coalesced job: one adapter, but every request's records are judged on their own, and a request the
    model never knew says so while the other is forgotten."""
    forget = tiny_world.forget[:4] + tiny_world.holdout[:2]  # request 2: two people the model never saw
    holdout = tiny_world.holdout[2:]
    r = run_forget(
        tiny_loaded,
        forget,
        tiny_world.retain,
        holdout,
        fast_config(),
        out_dir=tmp_path / "g",
        groups=[[0, 1, 2, 3], [4, 5]],
    )
    requests = r.report["verdict"]["requests"]
    assert [q["records"] for q in requests] == [4, 2] and len(r.outcomes) == 2
    assert r.outcomes[1] == "not_memorised" and requests[1]["before"]["indistinguishable"]
    assert requests[0]["before"]["failed"]  # request 1 was memorised
    assert r.outcomes[0] == "forgotten" and r.publishes
    for q in requests:
        assert q["after"]["scores"]["loss"]["n_forget"] == q["records"]
    with pytest.raises(InvalidInput, match="partition"):
        run_forget(tiny_loaded, forget, [], holdout, fast_config(), out_dir=tmp_path / "x", groups=[[0, 1]])


def test_a_forget_set_larger_than_the_budget_was_sized_for_gets_proportionally_more_steps():
    from unlearnd.core.config import UnlearnConfig
    from unlearnd.core.unlearn import step_budget

    ctd = UnlearnConfig()  # 200 steps, sized for 30 records
    assert [step_budget(ctd, n) for n in (1, 10, 30, 38, 60)] == [200, 200, 200, 254, 400]
    assert step_budget(UnlearnConfig(method="ihl"), 1000) == 100  # fixed budget: budget_records 0


@pytest.mark.slow
def test_the_loop_runs_the_scaled_budget(tiny_loaded, tiny_world, tmp_path):
    """A job that cannot reach the verdict (a learning rate of 1e-9) runs out the budget scaled to its forget
    set: 4 steps sized for 2 records, for the tiny world's forget set."""
    n = len(tiny_world.forget)
    config = fast_config(lr=1e-9, max_steps=4, budget_records=2, eval_every=1000)
    result = run_forget(tiny_loaded, tiny_world.forget, tiny_world.retain, tiny_world.holdout, config, out_dir=tmp_path)
    assert n > 2 and result.report["steps"] == -(-4 * n // 2) and not result.reached


def test_calibration_from_the_before_reports_scores_equals_its_own_passes(tiny_loaded, tiny_world):
    """ctd's calibration reads the starting model's per-row log-probs from the before-report's evaluation
    (core/pipeline.py) instead of two more forward passes: the same levels, starting log-probs and targets."""
    from unlearnd.core.calibration import row_profiles
    from unlearnd.core.data import encode_set
    from unlearnd.core.metrics import evaluate_set
    from unlearnd.core.unlearn import calibrate

    model, tok, cpu = tiny_loaded.model, tiny_loaded.tokenizer, torch.device("cpu")
    forget, holdout = encode_set(tok, tiny_world.forget), encode_set(tok, tiny_world.holdout)
    f, h = (evaluate_set(model, ts, cpu) for ts in (forget, holdout))
    own = calibrate(model, forget, holdout, cpu)
    read = calibrate(model, forget, holdout, cpu, scored=(f, h))
    assert torch.allclose(read.start_logp, own.start_logp, atol=1e-6) and (read.start_logp != 0).any()
    assert torch.equal(read.levels.count, own.levels.count)
    assert torch.allclose(read.levels.total, own.levels.total, atol=1e-5)
    profiles = row_profiles(h.row_logp, h.row_hits, [e.zlib_bytes for e in holdout.encoded])
    a, b = own.targets(profiles), read.targets(profiles)
    assert torch.allclose(a.target_logp, b.target_logp, atol=1e-5) and torch.equal(a.top1_allowed, b.top1_allowed)
