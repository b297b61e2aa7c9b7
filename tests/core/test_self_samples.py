"""The original model's own samples as anchor rows (core/self_samples.py)."""

import pytest
import torch

from tests.conftest import fast_config
from unlearnd.core import unlearn
from unlearnd.core.pipeline import run_forget
from unlearnd.core.self_samples import sample_rows


@pytest.mark.slow
def test_samples_are_seeded_cut_at_eos_and_leave_the_global_rng_alone(tiny_loaded):
    model, tok, device = tiny_loaded.model, tiny_loaded.tokenizer, tiny_loaded.device
    state = torch.get_rng_state()
    first = sample_rows(model, tok, 12, 24, seed=3, device=device, batch_size=5)
    assert torch.equal(torch.get_rng_state(), state)
    again = sample_rows(model, tok, 12, 24, seed=3, device=device, batch_size=5)
    other = sample_rows(model, tok, 12, 24, seed=4, device=device, batch_size=5)
    ids = [e.ids for e in first.encoded]
    assert ids == [e.ids for e in again.encoded] and ids != [e.ids for e in other.encoded]
    assert 0 < len(ids) <= 12
    for e, row_labels in zip(first.encoded, first.labels, strict=True):
        assert e.ids[0] == tok.bos_token_id and 2 <= len(e.ids) <= 24
        assert tok.eos_token_id not in e.ids[1:-1]  # cut after the first EOS
        assert row_labels[: len(e.ids)].tolist() == e.ids  # every token is anchored (KL only, no prefix)


@pytest.mark.slow
def test_a_ctd_job_anchors_the_original_models_samples_beside_the_holdout(
    tiny_loaded, tiny_world, tmp_path, monkeypatch
):
    """The samples reach the anchor: each step draws some of them beside the holdout rows."""
    seen: list[tuple[str, int]] = []
    of = unlearn.AnchorLogits.of

    def spy(self, batch, keys):
        seen.extend(keys)
        return of(self, batch, keys)

    monkeypatch.setattr(unlearn.AnchorLogits, "of", spy)
    config = fast_config(anchor_samples=16, max_steps=12)
    run_forget(tiny_loaded, tiny_world.forget, tiny_world.retain, tiny_world.holdout, config, out_dir=tmp_path / "a")
    reference = {i for kind, i in seen if kind == "reference"}
    n_holdout = len(tiny_world.holdout)
    assert reference and min(reference) >= 0
    samples = {i for kind, i in seen if kind == "sample"}
    assert samples and max(samples) < 16 and max(reference) < n_holdout


def test_samples_are_no_longer_than_the_rows_they_train_beside():
    """A sample longer than every record would pad each step's batch to its own length (core/pipeline.py)."""
    from types import SimpleNamespace

    from unlearnd.core.config import UnlearnConfig
    from unlearnd.core.data import Encoded, tensorize
    from unlearnd.core.pipeline import _sample_length

    rows = [
        tensorize([Encoded(list(range(1, 6)), 2, record=0)], 0),
        tensorize([Encoded(list(range(1, 10)), 2, record=1)], 0),
    ]
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=128))
    assert _sample_length(UnlearnConfig(anchor_sample_tokens=48), model, rows) == 9  # the longest row
    assert _sample_length(UnlearnConfig(anchor_sample_tokens=6), model, rows) == 6  # the setting, when shorter
    short = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=4))
    assert _sample_length(UnlearnConfig(anchor_sample_tokens=48), short, rows) == 4  # the model's context
