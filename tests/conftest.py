"""Shared fixtures: the tiny synthetic world, trained once and cached on disk keyed by its spec."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from unlearnd.core.config import UnlearnConfig

CACHE = Path(os.environ.get("UNLEARND_TEST_CACHE", Path(__file__).resolve().parent.parent / ".cache" / "tests"))


def fast_config(**overrides) -> UnlearnConfig:
    """The default method, ctd, with FILA (the init the tiny world's budget was tuned on; the service's default
    init for ctd, LoRA, is what the demo tests run), without the anchor's self-samples (sized on the demo world:
    on the tiny world's 54 retained records, taking a quarter of the anchor rows from them costs retain
    extraction; tests/core/test_self_samples.py covers them) and a budget that reaches the verdict in seconds."""
    base = {"init": "fila", "max_steps": 160, "eval_every": 4, "anchor_samples": 0, "seed": 0}
    base.update(overrides)
    return UnlearnConfig(**base)


@pytest.fixture(scope="session")
def tiny_world():
    """The CI-sized PII world (≈ 10 s to build once; reused across runs while its spec is unchanged)."""
    from unlearnd.core.worlds.pii import build_world, tiny_spec

    spec = tiny_spec()
    return build_world(CACHE / f"tiny-world-{spec.key()}", spec, log=lambda _m: None)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_world):
    """The tiny world's model loaded once; run_forget hands it back unchanged, so tests may share it."""
    from unlearnd.core.modeling import load_model

    return load_model(tiny_world.model_dir, device="cpu")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tiny_world):
    """A tiny randomly initialised GPT-2 (Conv1D layers) sharing the world's tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(str(tiny_world.model_dir))
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    out = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_chat_world():
    """The chat-formatted PII world: a tiny Llama with a chat template (≈ 8 s to build once, then cached)."""
    from unlearnd.core.worlds.chat import ChatWorldSpec, build_chat_world

    spec = ChatWorldSpec()
    return build_chat_world(CACHE / f"tiny-chat-world-{spec.key()}", spec, log=lambda _m: None)
