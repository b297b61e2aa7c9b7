"""Every measurement: memorisation accuracy, EL_n, exact extraction, perplexity, membership inference, probes.

Pure tensor functions (`*_from_logits`, `ngram_overlap`, `auc`) are the definitions; `evaluate_set` runs a
model over a whole set in batches and derives everything from one forward pass plus one batched greedy
decode, so evaluation inside the unlearning loop stays cheap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch

from unlearnd.core.data import IGNORE, Encoded, TokenSet, encode_set
from unlearnd.core.device import autocast
from unlearnd.core.losses import shift, token_logprobs
from unlearnd.core.modeling import context_length
from unlearnd.core.records import Probe, Record
from unlearnd.core.stats import auc


# ---------------------------------------------------------------- pure definitions on tensors and lists
def ma_per_record(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Memorisation accuracy per record: share of target tokens that are the teacher-forced argmax."""
    lg, lb = shift(logits, labels)
    mask = lb != IGNORE
    hit = (lg.argmax(-1) == lb) & mask
    return hit.sum(-1).float() / mask.sum(-1).clamp_min(1).float()


def nll_per_record(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token NLL, token count) per record."""
    picked, mask = token_logprobs(logits, labels)
    return -picked.sum(-1), mask.sum(-1)


def min_k_score(logits: torch.Tensor, labels: torch.Tensor, k: float = 0.2) -> torch.Tensor:
    """Min-k% Prob (Shi et al. 2024): mean log-prob of the k% least likely target tokens, per record.
    Higher means "looks like training data"."""
    return min_k_from_logprobs(*token_logprobs(logits, labels), k)


def min_k_from_logprobs(picked: torch.Tensor, mask: torch.Tensor, k: float = 0.2) -> torch.Tensor:
    """Min-k% from target log-probs and their mask (B×(T−1)), without a per-record loop."""
    count = mask.sum(-1)
    n = (count.double() * k).floor().long().clamp_min(1)  # max(1, int(len · k)), as in the paper's code
    lowest_first = picked.masked_fill(~mask, float("inf")).sort(-1).values.cumsum(-1)
    mean = lowest_first.gather(-1, (n - 1).clamp_max(picked.size(-1) - 1)[:, None]).squeeze(-1) / n
    return torch.where(count > 0, mean, torch.zeros_like(mean))


def last_miss(top1: torch.Tensor, ts: TokenSet, start: int = 0) -> torch.Tensor:
    """Per row, the last position t whose token the teacher-forced argmax at t−1 gets wrong (0 if none), from
    the argmax guesses `top1` (B×(T−1)) of rows `start…` of `ts`.

    Greedy decoding from a prefix of k tokens reproduces the rest of the row exactly iff every token from
    position k on is the argmax given the true tokens before it (by induction: the first wrong guess is where
    the decode leaves the row, and until then it saw exactly the true tokens). So exact extraction from prefix
    k is `last_miss < k`, for every k at once, from the forward pass the other metrics already need."""
    rows = ts.encoded[start : start + top1.size(0)]
    width = top1.size(1)
    truth = torch.zeros_like(top1)
    valid = torch.zeros_like(top1, dtype=torch.bool)
    for r, e in enumerate(rows):
        n = min(len(e.ids) - 1, width)
        truth[r, :n] = torch.as_tensor(e.ids[1 : n + 1], device=top1.device)
        valid[r, :n] = True
    position = torch.arange(1, width + 1, device=top1.device)
    return ((top1 != truth) & valid).long().mul(position).amax(-1).cpu()


def ngram_overlap(generated: list[int], reference: list[int], n: int) -> float:
    """Share of the reference's n-grams that the generation reproduces (count-clipped).

    With fewer than n reference tokens, n shrinks to the reference length, so short suffixes still count.
    """
    n = max(1, min(n, len(reference)))
    ref = Counter(tuple(reference[i : i + n]) for i in range(len(reference) - n + 1))
    gen = Counter(tuple(generated[i : i + n]) for i in range(len(generated) - n + 1))
    total = sum(ref.values())
    return sum(min(c, gen[g]) for g, c in ref.items()) / total if total else 0.0


# ---------------------------------------------------------------- running a model
@torch.inference_mode()
def forward_logits(model, ts: TokenSet, device: torch.device, batch_size: int = 32) -> list[torch.Tensor]:
    """Logits per batch of the set (batches keep the set's order)."""
    out = []
    for start in range(0, len(ts), batch_size):
        b = ts.select(list(range(start, min(start + batch_size, len(ts))))).to(device)
        with autocast(device):
            out.append(model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.float())
    return out


DECODE_CACHE_BYTES = 512 << 20  # KV cache of one greedy-decode batch


def decode_batch_rows(model, tokens_per_row: int, budget_bytes: int = DECODE_CACHE_BYTES) -> int:
    """Rows per decode batch whose KV cache fits `budget_bytes` (a few dozen for a 7B model), at most 128 on
    CPU: there the cache is re-concatenated every step and batches beyond ≈ 128 rows fall out of the CPU's
    caches (measured: 64–128 rows 0.45 s, 256 rows 0.65 s for 200 demo records)."""
    cfg = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    layers, hidden = getattr(cfg, "num_hidden_layers", None), getattr(cfg, "hidden_size", None)
    if not layers or not hidden:
        return 64
    heads = getattr(cfg, "num_attention_heads", None)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    kv_width = hidden * kv_heads // heads if heads else hidden  # grouped-query attention caches fewer heads
    weight = next(model.parameters())
    per_row = 2 * layers * kv_width * max(tokens_per_row, 1) * weight.element_size()
    cap = 128 if weight.device.type == "cpu" else 4096
    return int(max(1, min(cap, budget_bytes // per_row)))


def _decode_batches(
    order: list[int], prefixes: list[list[int]], lengths: list[int], batch_size: int, context: int
) -> Iterator[list[int]]:
    """Consecutive rows of `order` in batches of at most `batch_size`, cut wherever the batch would run past
    the model's context: a batch is as wide as its longest prefix and runs as many steps as its longest
    continuation, so a window's short-prefix row and another's long-prefix row may not share one."""
    batch: list[int] = []
    width = steps = 0
    for i in order:
        w, n = max(width, len(prefixes[i])), max(steps, lengths[i])
        if batch and (len(batch) == batch_size or w + n > context):
            yield batch
            batch, w, n = [], len(prefixes[i]), lengths[i]
        batch.append(i)
        width, steps = w, n
    if batch:
        yield batch


@torch.inference_mode()
def greedy_continue(
    model, prefixes: list[list[int]], lengths: list[int], device: torch.device, batch_size: int | None = None
) -> list[list[int]]:
    """Greedy continuation of each prefix for its length, KV-cached, in batches of left-padded prefixes.

    Padding is masked out and real tokens keep their true positions (`position_ids` count only real tokens),
    so each row decodes as if alone; rows are sorted by length so a batch holds little padding. Batches
    are as large as the KV-cache budget allows (`batch_size` overrides): the cost is dominated by forward
    calls per generated token, so any set of prefixes, whatever their lengths, takes a few batches.
    """
    out: list[list[int]] = [[] for _ in prefixes]
    # A batch runs as many steps as its longest continuation: group by that first, then by prefix length.
    order = sorted((i for i in range(len(prefixes)) if lengths[i] > 0), key=lambda i: (lengths[i], len(prefixes[i])))
    if not order:
        return out
    if batch_size is None:
        batch_size = decode_batch_rows(model, max(len(prefixes[i]) + lengths[i] for i in order))
    context = context_length(model) or 1 << 30
    for idx in _decode_batches(order, prefixes, lengths, batch_size, context):
        width = max(len(prefixes[i]) for i in idx)
        ids = torch.zeros((len(idx), width), dtype=torch.long)  # pad id 0: masked, never attended
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(prefixes[i]) :] = torch.tensor(prefixes[i], dtype=torch.long)
            mask[row, width - len(prefixes[i]) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        past, generated = None, []
        with autocast(device):
            for _ in range(max(lengths[i] for i in idx)):
                res = model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=past,
                    use_cache=True,
                    logits_to_keep=1,
                )
                past = res.past_key_values
                ids = res.logits[:, -1, :].argmax(-1, keepdim=True)
                generated.append(ids)
                mask = torch.cat([mask, mask.new_ones(len(idx), 1)], dim=1)
                positions = positions[:, -1:] + 1
        gen = torch.cat(generated, dim=1).tolist()
        for row, i in enumerate(idx):
            out[i] = gen[row][: lengths[i]]
    return out


ATTACK_PREFIX_TOKENS = (4, 8)  # an adversary's short prompts: the first tokens (about the subject's name)


@dataclass
class SetMetrics:
    n: int
    ma: float
    el10: float  # EL_n with the configured n (10 by default; the name is the report's), from the half prefix
    extraction: float  # share of records whose suffix some attack prefix reproduces exactly (the adversary's best)
    extraction_short: float  # the same from the short prefixes only (the first few tokens)
    extraction_half: float  # the same from the configured prefix (half a text record, a pair's prompt)
    perplexity: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SetScores:
    """Metrics plus per-record scores (kept out of reports: they feed membership tests and the verdict)."""

    metrics: SetMetrics
    loss: list[float]  # mean token NLL per record
    min_k: list[float]  # Min-20% log-prob per record
    zlib: list[float]  # mean token NLL ÷ zlib-compressed bytes of the target text (Carlini et al. 2021)
    ma: list[float]  # per record
    el: list[float] | None = None  # per record, when decoded
    extracted: list[bool] | None = None  # per record, when decoded
    extracted_short: list[bool] | None = None
    # Per row (window), from the same forward pass: its target tokens' log-probs in order and its top-1 hits.
    # What ctd's calibration re-profiles the holdout from after a check (core/calibration.py `Profile`).
    row_logp: list[torch.Tensor] | None = None
    row_hits: list[int] | None = None

    def subset(self, records: list[int]) -> SetScores:
        """The scores of some of the records (one request's, in a job that serves several), with the set
        metrics the verdict reads recomputed over them (perplexity and the half-prefix extraction are kept
        from the whole set: no verdict condition reads them)."""
        pick = lambda xs: [xs[i] for i in records] if xs is not None else None  # noqa: E731
        n = max(1, len(records))
        m = self.metrics
        metrics = SetMetrics(
            n=len(records),
            ma=sum(pick(self.ma)) / n,
            el10=sum(pick(self.el)) / n if self.el is not None else float("nan"),
            extraction=sum(pick(self.extracted)) / n if self.extracted is not None else float("nan"),
            extraction_short=sum(pick(self.extracted_short)) / n if self.extracted_short is not None else float("nan"),
            extraction_half=m.extraction_half,
            perplexity=m.perplexity,
        )
        return SetScores(
            metrics,
            pick(self.loss),
            pick(self.min_k),
            pick(self.zlib),
            pick(self.ma),
            pick(self.el),
            pick(self.extracted),
            pick(self.extracted_short),
        )

    def familiarity(self) -> dict[str, list[float]]:
        """The three membership scores, oriented so that higher means "looks like training data": loss and zlib
        are negated (Carlini et al. 2021; Shi et al. 2024 for Min-k%)."""
        return {"loss": [-x for x in self.loss], "zlib": [-x for x in self.zlib], "min_k": list(self.min_k)}


def evaluate_set(
    model,
    ts: TokenSet,
    device: torch.device,
    *,
    el_n: int = 10,
    generate: bool = True,
    batch_size: int = 32,
    attack_prefixes: tuple[int, ...] = ATTACK_PREFIX_TOKENS,
) -> SetScores:
    """All per-set metrics from one batched forward pass and (if `generate`) one batched greedy decode from the
    configured prefix (for EL_n; extraction from every attack prefix comes from the forward pass, `last_miss`).

    Scores are per *record*: the windows of a record longer than the context (core/data.py `windows`) are
    pooled — its loss and Min-k% over all its target tokens, its MA over them too, its zlib score (loss ÷ the
    sum of its windows' compressed sizes; it counts as extracted when any window is."""
    nan = float("nan")
    if len(ts) == 0:
        return SetScores(SetMetrics(0, nan, nan, nan, nan, nan, nan), [], [], [], [])
    was_training = model.training
    model.eval()
    hits, nll, tok, picked_rows, misses = [], [], [], [], []
    for start, logits in zip(range(0, len(ts), batch_size), forward_logits(model, ts, device, batch_size), strict=True):
        labels = ts.labels[start : start + batch_size, : logits.size(1)].to(device)
        lg, lb = shift(logits, labels)
        mask = lb != IGNORE
        top1 = lg.argmax(-1)
        hits.append(((top1 == lb) & mask).sum(-1))
        misses.append(last_miss(top1, ts, start))
        picked, _ = token_logprobs(logits, labels)  # once for the NLL and Min-k% (a V-wide log-softmax)
        nll.append(-picked.sum(-1))
        tok.append(mask.sum(-1))
        picked_rows += [p[m].double().cpu() for p, m in zip(picked, mask, strict=True)]
    gen = generation_scores(model, ts, device, torch.cat(misses), el_n, attack_prefixes) if generate else None
    if was_training:
        model.train()
    groups = record_rows(ts)
    hit_t, nll_t, tok_t = torch.cat(hits).cpu(), torch.cat(nll).double().cpu(), torch.cat(tok).cpu()
    loss, min_k, zlib, ma = [], [], [], []
    for rows in groups:
        n_tok = max(1, int(tok_t[rows].sum()))
        total = float(nll_t[rows].sum())
        loss.append(total / n_tok)
        ma.append(float(hit_t[rows].sum()) / n_tok)
        zlib.append(total / n_tok / sum(ts.encoded[r].zlib_bytes for r in rows))
        lp = torch.cat([picked_rows[r] for r in rows])
        min_k.append(float(min_k_from_logprobs(lp[None], torch.ones_like(lp, dtype=torch.bool)[None])[0]))
    metrics = SetMetrics(
        n=len(groups),
        ma=sum(ma) / len(ma),
        el10=gen.el if gen else nan,
        extraction=gen.extraction if gen else nan,
        extraction_short=gen.extraction_short if gen else nan,
        extraction_half=gen.extraction_half if gen else nan,
        perplexity=float(torch.exp(nll_t.sum() / tok_t.sum().clamp_min(1))),
    )
    per_row = {"row_logp": picked_rows, "row_hits": hit_t.tolist()}
    if gen is None:
        return SetScores(metrics, loss, min_k, zlib, ma, **per_row)
    return SetScores(metrics, loss, min_k, zlib, ma, gen.record_el, gen.extracted, gen.extracted_short, **per_row)


def record_rows(ts: TokenSet) -> list[list[int]]:
    """Row indices per record, records in order of first appearance (one row each unless windowed)."""
    groups: dict[int, list[int]] = {}
    for i, e in enumerate(ts.encoded):
        groups.setdefault(e.record, []).append(i)
    return list(groups.values())


def attack_prefix_lengths(e: Encoded, short: tuple[int, ...] = ATTACK_PREFIX_TOKENS) -> list[int]:
    """Where an adversary starts greedy extraction: the first `short` tokens of a text (each shorter than the
    configured prefix), then the configured prefix. A prompt/completion pair has one: its prompt."""
    if e.prompted:
        return [e.prefix_len]
    return sorted({k for k in short if 1 <= k < e.prefix_len} | {e.prefix_len})


@dataclass
class Generation:
    el: float  # EL_n from the configured prefix
    extraction: float  # any prefix
    extraction_short: float  # any prefix shorter than the configured one (texts); pairs count their prompt
    extraction_half: float  # the configured prefix
    extracted: list[bool]  # per record, any prefix
    extracted_short: list[bool]  # per record, a short prefix
    record_el: list[float]  # per record


def generation_scores(
    model,
    ts: TokenSet,
    device: torch.device,
    misses: torch.Tensor,
    el_n: int = 10,
    attack_prefixes: tuple[int, ...] = ATTACK_PREFIX_TOKENS,
) -> Generation:
    """EL_n and exact extraction of the set's records. Extraction from every attack prefix
    (`attack_prefix_lengths`) comes from the rows' teacher-forced misses (`last_miss`, from the forward pass of
    `evaluate_set`: exactly what a greedy decode from that prefix would reproduce); EL_n needs the greedy
    continuation itself, from the configured prefix only, and only of rows that prefix does not already
    extract (those reproduce their suffix: EL_n = 1). A record counts as extracted when any prefix of any of
    its windows reproduces the rest of that window token for token; its EL_n is the mean over its windows."""
    miss = misses.tolist()
    n = len(ts)
    hit_any, hit_short, hit_half, el = [False] * n, [False] * n, [False] * n, [1.0] * n
    for i, e in enumerate(ts.encoded):
        for k in attack_prefix_lengths(e, attack_prefixes):
            exact = miss[i] < k
            hit_any[i] |= exact
            if k == e.prefix_len:
                hit_half[i] = exact
            if k < e.prefix_len or e.prompted:
                hit_short[i] |= exact
    decode = [i for i in range(n) if not hit_half[i]]
    if decode:
        was_training = model.training
        model.eval()  # no dropout while decoding
        try:
            suffixes = [ts.encoded[i].ids[ts.encoded[i].prefix_len :] for i in decode]
            prefixes = [ts.encoded[i].ids[: ts.encoded[i].prefix_len] for i in decode]
            gens = greedy_continue(model, prefixes, [len(x) for x in suffixes], device)
        finally:
            model.train(was_training)
        for i, g, x in zip(decode, gens, suffixes, strict=True):
            el[i] = ngram_overlap(g, x, el_n)
    groups = record_rows(ts)

    def share(hit: list[bool]) -> float:
        return sum(any(hit[r] for r in rows) for rows in groups) / len(groups)

    extracted = [any(hit_any[r] for r in rows) for rows in groups]
    extracted_short = [any(hit_short[r] for r in rows) for rows in groups]
    record_el = [sum(el[r] for r in rows) / len(rows) for rows in groups]
    return Generation(
        sum(record_el) / len(groups),
        share(hit_any),
        share(hit_short),
        share(hit_half),
        extracted,
        extracted_short,
        record_el,
    )


def mia(forget: SetScores, holdout: SetScores) -> dict[str, float]:
    """Membership-inference AUC, forget (members) vs. holdout (never seen), per score: 1.0 = perfectly told
    apart as training data, 0.5 = indistinguishable (the goal), below 0.5 = forgotten "too much" (also
    detectable). The verdict's full two-sample evidence is core/verdict.py."""
    f, h = forget.familiarity(), holdout.familiarity()
    return {f"{name}_auc": auc(f[name], h[name]) for name in ("loss", "zlib", "min_k")}


def probe_accuracy(model, tokenizer, probes: list[Probe], device: torch.device) -> dict[str, float]:
    """Share of questions whose greedy answer starts with the correct answer, and the mean probability the
    model gives the correct answer's tokens (teacher-forced, geometric mean per token)."""
    if not probes:
        return {"accuracy": float("nan"), "answer_prob": float("nan")}
    records = [Record(prompt=p.question, completion=p.answer) for p in probes]
    ts = encode_set(tokenizer, records, max_length=512)
    prefixes = [e.ids[: e.prefix_len] for e in ts.encoded]
    answer_lens = [len(e.ids) - e.prefix_len for e in ts.encoded]
    gens = greedy_continue(model, prefixes, answer_lens, device)
    hits = 0
    for g, p in zip(gens, probes, strict=True):
        text = tokenizer.decode(g, skip_special_tokens=True)
        hits += text.strip().lower().startswith(p.answer.strip().lower())
    loss = torch.tensor(evaluate_set(model, ts, device, generate=False).loss)  # mean token NLL per answer
    return {"accuracy": hits / len(probes), "answer_prob": float(torch.exp(-loss).mean())}
