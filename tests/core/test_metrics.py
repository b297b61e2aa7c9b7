import math

import pytest
import torch

from unlearnd.core.data import encode_set
from unlearnd.core.losses import token_logprobs
from unlearnd.core.metrics import (
    auc,
    evaluate_set,
    greedy_continue,
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
