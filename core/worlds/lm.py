"""Training a tiny causal LM from scratch on a world's texts until it memorises them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from unlearnd.core.data import TokenSet, encode_set
from unlearnd.core.metrics import evaluate_set
from unlearnd.core.records import Record


@dataclass
class LMSpec:
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    lr: float = 1e-3
    batch: int = 32
    warmup: int = 30
    max_steps: int = 1500
    check_every: int = 30
    target_extraction: float = 0.9
    max_positions: int = 128


def gpt_neo(tokenizer, spec: LMSpec):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    config = GPTNeoConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=spec.max_positions,
        hidden_size=spec.hidden,
        num_layers=spec.layers,
        num_heads=spec.heads,
        # GPT-Neo validates that attention types cover exactly num_layers.
        attention_types=[[["global", "local"], spec.layers // 2]]
        if spec.layers % 2 == 0
        else [[["global"], spec.layers]],
        window_size=spec.max_positions,
        intermediate_size=4 * spec.hidden,
        embed_dropout=0.0,
        attention_dropout=0.0,
        resid_dropout=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPTNeoForCausalLM(config)


def train_memorise(
    model,
    tokenizer,
    train_texts: list[str],
    probe_texts: list[str],
    spec: LMSpec,
    *,
    seed: int,
    log: Callable[[str], None] = print,
) -> dict:
    """AdamW with linear warm-up and cosine decay over `max_steps`, stopping once greedy extraction of the
    probe texts' suffixes reaches the target. Returns the training summary."""
    ts = encode_set(tokenizer, [Record(text=t) for t in train_texts], max_length=spec.max_positions)
    probe = encode_set(tokenizer, [Record(text=t) for t in probe_texts], max_length=spec.max_positions)
    return train_memorise_sets(model, ts, probe, spec, seed=seed, log=log)


def train_memorise_sets(
    model,
    ts: TokenSet,
    probe: TokenSet | None,
    spec: LMSpec,
    *,
    seed: int,
    log: Callable[[str], None] = print,
    score: Callable[[torch.nn.Module], float] | None = None,
) -> dict:
    """`train_memorise` on encoded sets: the training labels are whatever `ts` carries, and extraction is
    measured from each probe record's own prefix. `score` (model → share in [0, 1], e.g. QA accuracy)
    replaces probe extraction as what must reach `spec.target_extraction`."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    device = torch.device("cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < spec.warmup:
            return (step + 1) / spec.warmup
        progress = (step - spec.warmup) / max(1, spec.max_steps - spec.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    extraction, step, loss = 0.0, 0, float("nan")
    perm: list[int] = []
    for step in range(1, spec.max_steps + 1):
        if len(perm) < spec.batch:
            perm = torch.randperm(len(ts), generator=gen).tolist()
        idx, perm = perm[: spec.batch], perm[spec.batch :]
        b = ts.select(idx)
        out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss = float(out.loss.detach())
        if step % spec.check_every == 0 and step >= spec.warmup:
            if score is not None:
                extraction = score(model)
            else:
                extraction = evaluate_set(model, probe, device, attack_prefixes=()).metrics.extraction_half
            model.train()
            log(f"step {step:5d}  loss {loss:.4f}  {'score' if score else 'extraction'} {extraction:.3f}")
            if extraction >= spec.target_extraction:
                break
    model.eval()
    return {"steps": step, "final_loss": loss, "probe_extraction": extraction}
