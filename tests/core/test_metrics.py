import math

import pytest
import torch

from unlearnd.core.data import encode_set
from unlearnd.core.losses import token_logprobs
from unlearnd.core.metrics import (
    attack_prefix_lengths,
    auc,
    evaluate_set,
    greedy_continue,
    last_miss,
    ma_per_record,
    min_k_score,
    ngram_overlap,
    nll_per_record,
)
from unlearnd.core.records import Record


def test_ma_counts_teacher_forced_argmax_hits_over_targets():
    logits = torch.zeros(1, 4, 3)
    logits[0, 0, 1] = 5  # predicts 1, label 1: hit
    logits[0, 1, 0] = 5  # predicts 0, label 2: miss
    logits[0, 2, 2] = 5  # predicts 2, label -100: ignored
    labels = torch.tensor([[9, 1, 2, -100]])
    assert ma_per_record(logits, labels).tolist() == [0.5]


def test_ngram_overlap_hand_cases():
    ref = [1, 2, 3, 4, 5]
    assert ngram_overlap(ref, ref, 2) == 1.0
    assert ngram_overlap([1, 2, 9, 4, 5], ref, 2) == pytest.approx(2 / 4)  # (1,2) and (4,5) of 4 bigrams
    assert ngram_overlap([7, 7, 7], ref, 2) == 0.0
    assert ngram_overlap([1, 2, 3], [1, 2, 3], 10) == 1.0  # n shrinks to the reference length
    assert ngram_overlap([1, 1, 1], [1, 1], 1) == 1.0  # count-clipped


def test_auc_hand_cases():
    assert auc([3, 4], [1, 2]) == 1.0
    assert auc([1, 2], [3, 4]) == 0.0
    assert auc([1, 2], [1, 2]) == 0.5
    assert auc([2], [1, 2, 3]) == pytest.approx((1 + 0.5) / 3)


def test_min_k_takes_mean_of_lowest_log_probs():
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    logits = probs.log().unsqueeze(0)
    labels = torch.tensor([[-100, 0, 0, 0, 0, 1]])  # position t is scored on labels[t + 1]
    # target log-probs: log .5, log .9, log .2, log .5, log .5 → k=0.4 of 5 = 2 lowest: log .2, log .5
    assert min_k_score(logits, labels, k=0.4).item() == pytest.approx((math.log(0.2) + math.log(0.5)) / 2, rel=1e-5)
    s, c = nll_per_record(logits, labels)
    assert c.item() == 5


def test_batched_min_k_equals_the_per_record_definition():
    """Rows of different lengths (masked tails) and k that rounds differently per row."""
    torch.manual_seed(3)
    logits = torch.randn(5, 12, 7)
    labels = torch.randint(0, 7, (5, 12))
    for row, length in enumerate([12, 9, 6, 3, 1]):  # the last row has no target token at all
        labels[row, length:] = -100
    labels[:, 0] = -100
    picked, mask = token_logprobs(logits, labels)
    for k in (0.2, 0.35, 1.0):
        expected = []
        for row, m in zip(picked, mask, strict=True):
            vals = row[m]
            n = max(1, int(len(vals) * k))
            expected.append(float(vals.sort().values[:n].mean()) if len(vals) else 0.0)
        assert min_k_score(logits, labels, k).tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt_neo", "gpt2"])
def test_batched_greedy_equals_per_sample_uncached_definition(arch, tiny_loaded, tiny_world, tiny_gpt2_dir):
    """Left-padded batches (several prefix lengths per batch, a batch size that splits the set) decode
    exactly what each prefix decodes alone, with absolute position embeddings (GPT-Neo, GPT-2)."""
    from unlearnd.core.modeling import load_model

    loaded = tiny_loaded if arch == "gpt_neo" else load_model(tiny_gpt2_dir, device="cpu")
    model, tok, device = loaded.model, loaded.tokenizer, loaded.device
    ts = encode_set(tok, tiny_world.retain[:12] + tiny_world.holdout[:4])
    prefixes = [e.ids[: e.prefix_len] for e in ts.encoded]
    lengths = [len(e.ids) - e.prefix_len for e in ts.encoded]
    assert len(set(map(len, prefixes))) > 3
    batched = greedy_continue(model, prefixes, lengths, device, batch_size=5)
    with torch.inference_mode():
        for prefix, n, got in zip(prefixes, lengths, batched, strict=True):
            ids = list(prefix)
            for _ in range(n):  # the textbook definition: re-run the whole sequence per token
                ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
            assert got == ids[len(prefix) :]


def test_last_miss_is_the_last_wrong_teacher_forced_guess_within_each_row():
    from unlearnd.core.data import Encoded, tensorize

    rows = [Encoded([5, 1, 2, 3, 4], 2), Encoded([5, 1, 2], 1), Encoded([5, 6, 7, 8], 2)]
    ts = tensorize(rows, pad=0)
    top1 = torch.tensor(
        [
            [1, 2, 3, 4],  # every guess right: extracted from any prefix
            [1, 9, 0, 7],  # token 2 (position 2) missed; positions 3 and 4 are padding and do not count
            [6, 0, 8, 0],  # token 7 (position 2) missed
        ]
    )
    assert last_miss(top1[:, :4], ts).tolist() == [0, 2, 2]
    assert last_miss(top1[1:], ts, start=1).tolist() == [2, 2]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt_neo", "gpt2"])
def test_teacher_forced_extraction_equals_greedy_decoding_from_every_attack_prefix(
    arch, tiny_loaded, tiny_world, tiny_gpt2_dir
):
    """The extraction `evaluate_set` reports (from its forward pass, `last_miss`) is what a batched greedy
    decode from each attack prefix reproduces, row by row, on memorised and never-seen records."""
    from unlearnd.core.modeling import load_model

    loaded = tiny_loaded if arch == "gpt_neo" else load_model(tiny_gpt2_dir, device="cpu")
    model, tok, device = loaded.model, loaded.tokenizer, loaded.device
    ts = encode_set(tok, tiny_world.retain[:24] + tiny_world.holdout[:8])
    scores = evaluate_set(model, ts, device, batch_size=7)
    rows = [(i, k) for i, e in enumerate(ts.encoded) for k in attack_prefix_lengths(e)]
    decoded = greedy_continue(
        model, [ts.encoded[i].ids[:k] for i, k in rows], [len(ts.encoded[i].ids) - k for i, k in rows], device
    )
    exact = {(i, k): g == ts.encoded[i].ids[k:] for (i, k), g in zip(rows, decoded, strict=True)}
    any_prefix = [any(v for (i, _), v in exact.items() if i == r) for r in range(len(ts))]
    short = [any(v for (i, k), v in exact.items() if i == r and k < ts.encoded[r].prefix_len) for r in range(len(ts))]
    assert scores.extracted == any_prefix
    assert scores.extracted_short == short
    if arch == "gpt_neo":  # the trained world: both outcomes occur, so the comparison means something
        assert 0 < sum(any_prefix) < len(ts)
    half = [g for (i, k), g in zip(rows, decoded, strict=True) if k == ts.encoded[i].prefix_len]
    el = [ngram_overlap(g, e.ids[e.prefix_len :], 10) for g, e in zip(half, ts.encoded, strict=True)]
    assert scores.el == pytest.approx(el)


@pytest.mark.slow
def test_batched_set_metrics_equal_per_record_evaluation(tiny_loaded, tiny_world):
    model, tok, device = tiny_loaded.model, tiny_loaded.tokenizer, tiny_loaded.device
    records = tiny_world.forget + tiny_world.holdout[:5]
    whole = evaluate_set(model, encode_set(tok, records), device, batch_size=4)
    singles = [evaluate_set(model, encode_set(tok, [r]), device) for r in records]
    assert whole.metrics.ma == pytest.approx(sum(s.metrics.ma for s in singles) / len(singles), abs=1e-6)
    assert whole.metrics.extraction == pytest.approx(sum(s.metrics.extraction for s in singles) / len(singles))
    assert whole.metrics.el10 == pytest.approx(sum(s.metrics.el10 for s in singles) / len(singles))
    assert whole.loss == pytest.approx([s.loss[0] for s in singles], abs=1e-5)


@pytest.mark.slow
def test_trained_people_are_extracted_and_holdout_people_are_not(tiny_loaded, tiny_world):
    tok, device = tiny_loaded.tokenizer, tiny_loaded.device
    trained = evaluate_set(tiny_loaded.model, encode_set(tok, tiny_world.retain), device).metrics
    holdout = evaluate_set(tiny_loaded.model, encode_set(tok, tiny_world.holdout), device).metrics
    assert trained.extraction >= 0.85
    assert holdout.extraction == 0.0
    assert holdout.ma < trained.ma


def test_prompt_completion_records_target_only_the_completion(tiny_world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_world.model_dir))
    ts = encode_set(tok, [Record(prompt="Ada Novak was born in", completion=" Oakhaven.")])
    enc = ts.encoded[0]
    labels = ts.labels[0].tolist()
    assert all(x == -100 for x in labels[: enc.prefix_len])
    assert labels[enc.prefix_len : len(enc.ids)] == enc.ids[enc.prefix_len :]
    assert tok.decode(enc.ids[enc.prefix_len :], skip_special_tokens=True).strip() == "Oakhaven."


@pytest.mark.slow
def test_probe_accuracy_and_answer_probability_match_the_definition(tiny_loaded, tiny_world):
    from unlearnd.core.metrics import probe_accuracy
    from unlearnd.core.records import Probe

    model, tok, device = tiny_loaded.model, tiny_loaded.tokenizer, tiny_loaded.device
    texts = [r.text for r in tiny_world.retain[:6]]
    probes = [Probe(question=t.split(" Email:")[0], answer=" Email:" + t.split(" Email:")[1]) for t in texts]
    got = probe_accuracy(model, tok, probes, device)
    probs, hits = [], 0
    with torch.inference_mode():
        for p in probes:  # one by one: uncached greedy answer, and the teacher-forced answer probability
            ts = encode_set(tok, [Record(prompt=p.question, completion=p.answer)])
            enc = ts.encoded[0]
            ids = enc.ids[: enc.prefix_len]
            for _ in range(len(enc.ids) - enc.prefix_len):
                ids = ids + [int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())]
            answer = tok.decode(ids[enc.prefix_len :], skip_special_tokens=True)
            hits += answer.strip().lower().startswith(p.answer.strip().lower())
            logits = model(input_ids=ts.input_ids).logits
            s, c = nll_per_record(logits, ts.labels)
            probs.append(math.exp(-(s / c).item()))
    assert hits >= 3  # memorised people: the question elicits the rest of the record for most of them
    assert got["accuracy"] == hits / len(probes)
    assert got["answer_prob"] == pytest.approx(sum(probs) / len(probs), rel=1e-5)
    wrong = probe_accuracy(model, tok, [Probe(p.question, " Email: nobody@nowhere.test.") for p in probes], device)
    assert wrong["accuracy"] == 0.0 and wrong["answer_prob"] < got["answer_prob"]


def test_decode_batch_rows_follows_the_kv_cache_budget():
    from types import SimpleNamespace

    from unlearnd.core.metrics import decode_batch_rows

    class Fake(torch.nn.Module):
        def __init__(self, **cfg):
            super().__init__()
            self.config = SimpleNamespace(**cfg)
            self.w = torch.nn.Parameter(torch.zeros(1, dtype=torch.bfloat16))

    llama7b = Fake(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=32)
    per_row = 2 * 32 * 4096 * 100 * 2  # K and V, every layer, 100 tokens, bf16
    assert decode_batch_rows(llama7b, 100, budget_bytes=10 * per_row) == 10
    gqa = Fake(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8)
    assert decode_batch_rows(gqa, 100, budget_bytes=10 * per_row) == 40  # 4× fewer cached heads
    assert decode_batch_rows(llama7b, 100, budget_bytes=1) == 1
    assert decode_batch_rows(Fake(num_hidden_layers=2, hidden_size=8), 10) == 128  # CPU cap
    assert decode_batch_rows(Fake(), 10) == 64  # no usable config: a safe default


@pytest.mark.slow
def test_an_evaluation_holds_the_holdout_profiles_a_separate_forward_pass_gives(tiny_loaded, tiny_world):
    """ctd re-profiles the holdout after each check from the check's own evaluation (`row_profiles`): the
    same profiles as a separate forward pass (`holdout_profiles` of its token log-probs) gives."""
    from unlearnd.core.calibration import holdout_profiles, row_profiles
    from unlearnd.core.unlearn import _token_logprobs_of

    def profiles_of(model, ts, device):
        with torch.no_grad():
            logp, _, top1 = _token_logprobs_of(model, ts, device)
        return holdout_profiles(ts.labels[:, 1:], logp, top1, [e.zlib_bytes for e in ts.encoded])

    model, tok, device = tiny_loaded.model, tiny_loaded.tokenizer, tiny_loaded.device
    ts = encode_set(tok, tiny_world.holdout)
    scores = evaluate_set(model, ts, device, generate=False, batch_size=5)
    got = row_profiles(scores.row_logp, scores.row_hits, [e.zlib_bytes for e in ts.encoded])
    want = profiles_of(model, ts, device)
    assert len(got) == len(want) == len(ts)
    for g, w in zip(got, want, strict=True):
        assert g.top1 == w.top1 and g.zlib_bytes == w.zlib_bytes
        assert torch.allclose(g.logp, w.logp, atol=1e-5)
