"""One training step's forward passes (core/unlearn.py `forward_sets`): rows of similar width share one padded
pass; long documents and short anchor rows get a pass each, with the same logits either way."""

import torch

from unlearnd.core.data import encode_set, packs_well
from unlearnd.core.records import Record
from unlearnd.core.unlearn import forward_sets

WIDTH = 64  # within the tiny model's positions


def _sets(tok):
    long_text = " ".join(f"Sentence {i} says nothing about anyone." for i in range(6))
    long_ = encode_set(tok, [Record(text=long_text + f" Document {i}.") for i in range(3)], max_length=WIDTH)
    short = encode_set(tok, [Record(text=f"Ann {i} lives in Oslo.") for i in range(6)], max_length=WIDTH)
    short2 = encode_set(tok, [Record(text=f"Bo {i} works at Acme.") for i in range(4)], max_length=WIDTH)
    return long_, short, short2


def _own_logits(model, ts):
    return model(input_ids=ts.input_ids, attention_mask=ts.attention_mask).logits


def test_packing_pays_only_where_the_padding_is_small(tiny_loaded):
    long_, short, short2 = _sets(tiny_loaded.tokenizer)
    assert long_.input_ids.size(1) > 3 * short.input_ids.size(1)
    assert packs_well([short, short2]) and packs_well([long_, long_.select([0])])
    assert not packs_well([long_, short])


def test_forward_sets_gives_each_sets_own_logits_in_as_few_passes_as_pay(tiny_loaded):
    model = tiny_loaded.model.eval()
    long_, short, short2 = _sets(tiny_loaded.tokenizer)
    passes = []
    hook = model.register_forward_hook(lambda m, args, out: passes.append(1))
    try:
        with torch.no_grad():
            split = forward_sets(model, [long_, short, short2])
            n_split = len(passes)
            packed = forward_sets(model, [short, short2])
            n_packed = len(passes) - n_split
            own = [_own_logits(model, ts) for ts in (long_, short, short2)]
    finally:
        hook.remove()
    assert (n_split, n_packed) == (2, 1)  # the long documents alone; the two short sets together
    for got, want, ts in zip([*split, *packed], [*own, *own[1:]], [long_, short, short2, short, short2], strict=True):
        assert got.shape == (*ts.input_ids.shape, want.size(-1))
        mask = ts.attention_mask.bool()
        assert torch.allclose(got[mask], want[mask], atol=1e-4)
