"""Text the original model writes itself, as anchor rows: its behaviour on whatever it would say unprompted.

The anchor of `ctd` (core/losses.py) holds the model on the retained records and on never-seen ones from the
holdout; both are the registered kind of data (people, in the demo). The model's other knowledge — generic
prose it was also trained on — had no anchor, and drifted with every unlearning step (demo world, 10 people:
generic perplexity × 1.05 ± 0.02). Samples from the original model cover its own distribution without any
extra data from the user (the idea of distilling a model on its own generations, e.g. Hinton et al. 2015's
"transfer set" and the data-free distillation that followed); the anchor's KL on them keeps that distribution.
"""

from __future__ import annotations

import torch
from torch import nn

from unlearnd.core.data import Encoded, TokenSet, tensorize


@torch.no_grad()
def sample_rows(
    model: nn.Module, tokenizer, n: int, max_tokens: int, seed: int, device: torch.device, batch_size: int = 64
) -> TokenSet:
    """`n` sequences sampled from the model (temperature 1, no top-k/top-p cut) from its BOS token (EOS where it
    has none), each at most `max_tokens` long and cut after its first EOS, as KL-only rows (no extraction
    prefix to speak of: prefix 1). Seeded, and the global RNG left as it was."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    rows: list[Encoded] = []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for begin in range(0, n, batch_size):
                k = min(batch_size, n - begin)
                ids = torch.full((k, 1), start, dtype=torch.long, device=device)
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=max_tokens - 1,
                    pad_token_id=eos if eos is not None else 0,
                    eos_token_id=eos,
                )
                for seq in out.tolist():
                    if eos is not None and eos in seq[1:]:
                        seq = seq[: seq.index(eos, 1) + 1]
                    if len(seq) >= 2:
                        rows.append(Encoded(seq, 1, record=len(rows)))
    finally:
        model.train(was_training)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    return tensorize(rows, pad)
