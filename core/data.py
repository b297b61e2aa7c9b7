"""Records → token tensors: training batches (labels with -100 on prompts and padding) and prefix/suffix splits.

Tokenising once per job and slicing batches from the cached tensors keeps the loop free of tokenizer calls.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from core.chat import encode_chat, uses_chat_template
from core.errors import InvalidInput
from core.records import Record

IGNORE = -100


@dataclass
class Encoded:
    """One record as token ids, with the boundary between extraction prefix and target suffix."""

    ids: list[int]
    prefix_len: int  # ids[:prefix_len] is the prompt/prefix, ids[prefix_len:] the target
    prompted: bool = False  # a prompt/completion pair: the prompt is the only extraction prefix
    zlib_bytes: int = 1  # zlib-compressed size of the target text (the zlib membership score's normaliser)
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


def _ids(tokenizer, text: str, *, add_special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def encode_record(tokenizer, record: Record, *, prefix_fraction: float, max_length: int) -> Encoded:
    """Token ids of a record with the BOS/EOS its tokenizer adds, and the prefix/suffix boundary.

    For text the prefix is the first `prefix_fraction` of the tokens (at least one, at most all but one);
    for prompt/completion it is the prompt, so extraction asks "does the prompt still elicit the completion".
    Conversations, and pairs on a model with a chat template, are rendered by the template (core/chat.py).
    """
    if uses_chat_template(tokenizer, record):
        chat = encode_chat(tokenizer, record, max_length=max_length)
        return Encoded(chat.ids, chat.prefix_len, True, zlib_size(chat.target_text), chat.target_mask)
    if record.text is not None:
        ids = _ids(tokenizer, record.text, add_special=True)
        ids = _ensure_eos(tokenizer, ids)[:max_length]
        if len(ids) < 2:
            raise InvalidInput("a record is too short to unlearn (fewer than 2 tokens)")
        prefix = min(max(1, round(len(ids) * prefix_fraction)), len(ids) - 1)
        return Encoded(ids, prefix, zlib_bytes=zlib_size(tokenizer.decode(ids, skip_special_tokens=True)))
    full = _ensure_eos(tokenizer, _ids(tokenizer, record.full_text, add_special=True))
    prompt = _ids(tokenizer, record.prompt or "", add_special=True)
    prompt = _strip_eos(tokenizer, prompt)
    # Byte-level BPE may merge across the prompt/completion boundary; use the longest shared prefix.
    k = 0
    while k < min(len(prompt), len(full)) and prompt[k] == full[k]:
        k += 1
    k = max(1, min(k, len(full) - 1))
    full = full[:max_length]
    prefix = min(k, len(full) - 1)
    completion = tokenizer.decode(full[prefix:], skip_special_tokens=True)
    return Encoded(full, prefix, prompted=True, zlib_bytes=zlib_size(completion))


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
    encoded = [encode_record(tokenizer, r, prefix_fraction=prefix_fraction, max_length=max_length) for r in records]
    return tensorize(encoded, pad_id(tokenizer), records=records, target=target)


def tensorize(encoded: list[Encoded], pad: int, *, records: list[Record] | None = None, target: str = "all"):
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
        is_pair = records is not None and records[i].text is None
        start = e.prefix_len if (is_pair or target == "suffix") else 0
        labels[i, start : len(t)] = t[start:]
    return TokenSet(input_ids, mask, labels, encoded)
