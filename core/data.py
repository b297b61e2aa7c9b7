"""Records → token tensors: training batches (labels with -100 on prompts and padding) and prefix/suffix splits.

Tokenising once per job and slicing batches from the cached tensors keeps the loop free of tokenizer calls.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from unlearnd.core.chat import encode_chat, uses_chat_template
from unlearnd.core.errors import InvalidInput
from unlearnd.core.records import Record

IGNORE = -100


@dataclass
class Encoded:
    """One record — or one window of a record longer than the model's context — as token ids, with the
    boundary between extraction prefix and target suffix."""

    ids: list[int]
    prefix_len: int  # ids[:prefix_len] is the prompt/prefix, ids[prefix_len:] the target
    prompted: bool = False  # the prefix is fixed (a pair's prompt, a later window's context): no other prefix
    zlib_bytes: int = 1  # zlib-compressed size of the target text (the zlib membership score's normaliser)
    label_from: int = 0  # first position whose token is a target (0 for a whole text; the prompt's end for a pair)
    record: int = 0  # the record this row belongs to (set by `encode_set`)
    window: int = 0  # which window of its record (0 unless the record is longer than the context)
    target_mask: list[bool] | None = None  # a conversation: which tokens are targets (its assistant turns)


@dataclass
class TokenSet:
    """A padded batch of a whole set: input_ids, attention_mask, labels (B×T), plus the encodings."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    encoded: list[Encoded]

    def __len__(self) -> int:
        return len(self.encoded)

    def select(self, idx: torch.Tensor | list[int]) -> TokenSet:
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        width = int(self.attention_mask[idx_t].sum(1).max()) if len(idx_t) else 0
        return TokenSet(
            self.input_ids[idx_t, :width],
            self.attention_mask[idx_t, :width],
            self.labels[idx_t, :width],
            [self.encoded[i] for i in idx_t.tolist()],
        )

    @property
    def n_records(self) -> int:
        return len({e.record for e in self.encoded})

    def select_records(self, records: list[int]) -> TokenSet:
        """The rows (windows) of the given records, in row order."""
        keep = set(records)
        return self.select([i for i, e in enumerate(self.encoded) if e.record in keep])

    def to(self, device: torch.device | str) -> TokenSet:
        return TokenSet(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device), self.encoded)


def concat(sets: list[TokenSet]) -> TokenSet:
    """Rows of several sets in one right-padded batch (pad positions are masked and carry no label), so one
    forward pass serves them all; each set's rows keep their positions, hence their outputs."""
    width = max(ts.input_ids.size(1) for ts in sets)

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.size(1)), value=value)

    return TokenSet(
        torch.cat([pad(ts.input_ids, 0) for ts in sets]),
        torch.cat([pad(ts.attention_mask, 0) for ts in sets]),
        torch.cat([pad(ts.labels, IGNORE) for ts in sets]),
        [e for ts in sets for e in ts.encoded],
    )


def packs_well(sets: list[TokenSet], slack: float = 1.25) -> bool:
    """Whether one padded batch of these sets (`concat`) computes at most `slack` times the tokens that a pass
    per set would. On a small model the step is launch-bound, so one pass over forget and anchor rows together
    halves the kernel launches; but a padded position costs as much as a real one, and a batch of long documents
    (RESTOR's "much context" corruption documents: 159 tokens) padding two dozen 16-token anchor rows to its
    width computes 3× the tokens, most of the step's time on padding."""
    rows = [ts.input_ids.size(0) for ts in sets]
    widths = [ts.input_ids.size(1) for ts in sets]
    return sum(rows) * max(widths) <= slack * sum(r * w for r, w in zip(rows, widths, strict=True))


def _ids(tokenizer, text: str, *, add_special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def encode_record(tokenizer, record: Record, *, prefix_fraction: float, max_length: int) -> list[Encoded]:
    """Token ids of a record with the BOS/EOS its tokenizer adds, and the prefix/suffix boundary; a record
    longer than `max_length` tokens becomes overlapping windows (`windows`), none of it truncated away.

    For text the prefix is the first `prefix_fraction` of the tokens (at least one, at most all but one);
    for prompt/completion it is the prompt, so extraction asks "does the prompt still elicit the completion".
    Conversations, and pairs on a model with a chat template, are rendered by the template (core/chat.py).
    """
    if uses_chat_template(tokenizer, record):
        chat = encode_chat(tokenizer, record, max_length=max_length)
        return [
            Encoded(
                chat.ids,
                chat.prefix_len,
                prompted=True,
                zlib_bytes=zlib_size(chat.target_text),
                label_from=chat.prefix_len,
                target_mask=chat.target_mask,
            )
        ]
    if record.text is not None:
        ids = _ensure_eos(tokenizer, _ids(tokenizer, record.text, add_special=True))
        if len(ids) < 2:
            raise InvalidInput("a record is too short to unlearn (fewer than 2 tokens)")
        if len(ids) > max_length:
            return windows(tokenizer, ids, 0, max_length, prefix_fraction)
        prefix = min(max(1, round(len(ids) * prefix_fraction)), len(ids) - 1)
        return [Encoded(ids, prefix, zlib_bytes=zlib_size(tokenizer.decode(ids, skip_special_tokens=True)))]
    full = _ensure_eos(tokenizer, _ids(tokenizer, record.full_text, add_special=True))
    prompt = _ids(tokenizer, record.prompt or "", add_special=True)
    prompt = _strip_eos(tokenizer, prompt)
    # Byte-level BPE may merge across the prompt/completion boundary; use the longest shared prefix.
    k = 0
    while k < min(len(prompt), len(full)) and prompt[k] == full[k]:
        k += 1
    k = max(1, min(k, len(full) - 1))
    if len(full) > max_length:
        return windows(tokenizer, full, k, max_length, prefix_fraction)
    completion = tokenizer.decode(full[k:], skip_special_tokens=True)
    return [Encoded(full, k, prompted=True, zlib_bytes=zlib_size(completion), label_from=k)]


def windows(tokenizer, ids: list[int], target_from: int, width: int, prefix_fraction: float) -> list[Encoded]:
    """A sequence longer than the model's context as windows of `width` tokens that overlap by half: every
    target token is a target in exactly one window, and every window after the first starts with the half
    window before it as context (not a target), so no token is predicted from less than half a window.

    Per window, extraction asks whether its prefix elicits the rest of it: the first window's prefix is
    `prefix_fraction` of it (or the prompt, clipped to half a window, for a pair), a later window's prefix is
    its context. A record counts as extracted when any of its windows is (core/metrics.py)."""
    if width < 8:
        raise InvalidInput(f"max_length {width} is too short to window a long record")
    half = width // 2
    # A pair's prompt longer than half a window keeps its last half window: the completion must fit.
    start = max(0, target_from - half)
    out: list[Encoded] = []
    first = True
    covered = target_from  # targets before this position are in an earlier window (or the prompt)
    while covered < len(ids):
        begin = start if first else covered - half
        chunk = ids[begin : begin + width]
        label_from = covered - begin
        if first and target_from == 0:
            prefix = min(max(1, round(len(chunk) * prefix_fraction)), len(chunk) - 1)
            fixed = False
        else:
            prefix, fixed = max(1, label_from), True
        text = tokenizer.decode(chunk[label_from:], skip_special_tokens=True)
        out.append(Encoded(chunk, prefix, fixed, zlib_size(text), label_from, window=len(out)))
        covered = begin + len(chunk)
        first = False
    return out


def zlib_size(text: str) -> int:
    """Bytes of the zlib-compressed text (at least 1): Carlini et al. 2021's reference entropy of a string."""
    return max(1, len(zlib.compress(text.encode("utf-8"))))


def _ensure_eos(tokenizer, ids: list[int]) -> list[int]:
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids = ids + [eos]
    return ids


def _strip_eos(tokenizer, ids: list[int]) -> list[int]:
    eos = tokenizer.eos_token_id
    return ids[:-1] if eos is not None and ids and ids[-1] == eos else ids


def pad_id(tokenizer) -> int:
    for cand in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if cand is not None:
            return int(cand)
    return 0


def encode_set(
    tokenizer,
    records: list[Record],
    *,
    prefix_fraction: float = 0.5,
    max_length: int = 256,
    target: str = "all",
) -> TokenSet:
    """Encode and right-pad a set. `target="all"` trains on every token after the first (texts) or on the
    completion (pairs); `target="suffix"` only on tokens after the prefix (used for extraction-style losses).
    """
    encoded: list[Encoded] = []
    for i, r in enumerate(records):
        for e in encode_record(tokenizer, r, prefix_fraction=prefix_fraction, max_length=max_length):
            e.record = i
            encoded.append(e)
    return tensorize(encoded, pad_id(tokenizer), target=target)


def tensorize(encoded: list[Encoded], pad: int, *, target: str = "all"):
    n = len(encoded)
    width = max((len(e.ids) for e in encoded), default=1)
    input_ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    for i, e in enumerate(encoded):
        t = torch.tensor(e.ids, dtype=torch.long)
        input_ids[i, : len(t)] = t
        mask[i, : len(t)] = 1
        if e.target_mask is not None:  # a conversation: its assistant turns, wherever they are
            labels[i, : len(t)] = t.masked_fill(~torch.tensor(e.target_mask), IGNORE)
            continue
        start = max(e.label_from, e.prefix_len) if target == "suffix" else e.label_from
        labels[i, start : len(t)] = t[start:]
    return TokenSet(input_ids, mask, labels, encoded)
