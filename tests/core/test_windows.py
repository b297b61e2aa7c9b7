"""Records longer than the model's context: unlearned and measured window by window (core/data.py `windows`),
never truncated, never a crash-and-retry loop."""

import pytest
import torch

from unlearnd.core.config import UnlearnConfig
from unlearnd.core.data import IGNORE, encode_set, windows
from unlearnd.core.metrics import evaluate_set
from unlearnd.core.modeling import context_length, load_model
from unlearnd.core.pipeline import run_forget
from unlearnd.core.records import Record


class _Tok:
    """Enough of a tokenizer for `windows`: it only decodes target text for the zlib size."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


@pytest.mark.parametrize(("n", "width", "target_from"), [(300, 64, 0), (129, 64, 0), (200, 32, 50), (65, 64, 10)])
def test_windows_cover_every_target_once_and_give_each_half_a_window_of_context(n, width, target_from):
    ids = list(range(1000, 1000 + n))
    rows = windows(_Tok(), ids, target_from, width, 0.5)
    seen: list[int] = []
    for w, e in enumerate(rows):
        assert len(e.ids) <= width and e.window == w
        seen += e.ids[e.label_from :]
        if w > 0:
            assert e.label_from == width // 2 and e.prompted and e.prefix_len == e.label_from
            assert e.ids[: e.label_from] == rows[w - 1].ids[-e.label_from :]  # the previous window's second half
    assert seen == ids[target_from:]  # every target token exactly once, in order
    if target_from == 0:
        assert not rows[0].prompted and 0 < rows[0].prefix_len < len(rows[0].ids)


def test_a_long_record_is_one_record_of_several_rows(tiny_world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_world.model_dir))
    long_text = " ".join(r.text for r in tiny_world.retain[:12])
    ts = encode_set(tok, [Record(text=long_text), tiny_world.forget[0]], max_length=64)
    assert ts.input_ids.size(1) <= 64 and len(ts) > 3 and ts.n_records == 2
    first_record_rows = [e for e in ts.encoded if e.record == 0]
    targets = sum(int((ts.labels[i] != IGNORE).sum()) for i, e in enumerate(ts.encoded) if e.record == 0)
    ids = tok(long_text)["input_ids"]
    full = len(ids) + (ids[-1] != tok.eos_token_id)  # with the EOS the record gets
    assert len(first_record_rows) >= 3 and targets == full  # nothing truncated away


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt_neo", "gpt2"])
def test_a_record_three_times_the_context_is_unlearned_without_a_crash(arch, tiny_world, tiny_gpt2_dir, tmp_path):
    source = tiny_world.model_dir if arch == "gpt_neo" else tiny_gpt2_dir
    loaded = load_model(source, device="cpu")
    context = context_length(loaded.model)
    assert context == 128
    long_text = " ".join(r.text for r in tiny_world.retain[:12])
    assert len(loaded.tokenizer(long_text)["input_ids"]) > 3 * context
    forget = [Record(text=long_text), tiny_world.forget[0]]
    # max_length above the context (the API's default is 256): clamped to the model's 128 positions
    config = UnlearnConfig(method="ihl", max_length=512, max_steps=4, eval_every=2, seed=0)
    r = run_forget(loaded, forget, tiny_world.retain[12:40], tiny_world.holdout, config, out_dir=tmp_path / "a")
    assert r.report["steps"] == 4 and r.report["after"]["forget"]["n"] == 2  # records, not windows
    assert r.report["adapter"]["export_max_abs_diff"] <= 1e-4
    scores = evaluate_set(loaded.model, encode_set(loaded.tokenizer, forget, max_length=context), torch.device("cpu"))
    assert len(scores.loss) == 2 and scores.metrics.n == 2
