"""Tiny random-initialised models of the architecture families users bring (Llama 3, Mistral, Qwen 2.5/3,
Gemma 2, Phi-3, GPT-NeoX, and the GPT-Neo/GPT-2 of the synthetic worlds), built from a config: no download.

Each family keeps what makes it different, at a size that runs in seconds on a CPU: grouped-query attention
(2 key/value heads for 4 query heads), Qwen 2's biased q/k/v and tied embeddings, Qwen 3's q/k norms, Gemma 2's
soft-capping, sliding window and tied embeddings, Phi-3's fused `qkv_proj`/`gate_up_proj`, GPT-NeoX's fused
`query_key_value` and partial rotary, GPT-2's transposed `Conv1D`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3", "gpt_neox", "gpt_neo", "gpt2")


@dataclass(frozen=True)
class Shape:
    """The size of a decoder: `heads` query heads of `head_dim`, `kv_heads` key/value heads (fewer: GQA)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    max_positions: int = 256
    tie_embeddings: bool | None = None  # None: the family's own default (Qwen 2 small and Gemma 2 tie)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def family_config(family: str, vocab_size: int, shape: Shape = Shape(), *, bos: int = 1, eos: int = 2, pad=None):
    """A transformers config of `family` at `shape`, with the tokenizer's special ids (a `pad` of None is a
    tokenizer without a pad token, like Llama 3's base models). Dropout is off everywhere, so two forward
    passes of the same weights agree to float rounding."""
    from transformers import AutoConfig, GPT2Config, GPTNeoConfig

    ids = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}
    if family == "gpt_neo":
        return GPTNeoConfig(
            vocab_size=vocab_size,
            max_position_embeddings=shape.max_positions,
            hidden_size=shape.hidden,
            num_layers=shape.layers,
            num_heads=shape.heads,
            attention_types=[[["global", "local"], shape.layers // 2]] if shape.layers % 2 == 0 else [[["global"], 1]],
            window_size=shape.max_positions,
            intermediate_size=shape.intermediate,
            embed_dropout=0.0,
            attention_dropout=0.0,
            resid_dropout=0.0,
            **ids,
        )
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=shape.max_positions,
            n_embd=shape.hidden,
            n_layer=shape.layers,
            n_head=shape.heads,
            n_inner=shape.intermediate,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **ids,
        )
    common = {
        "vocab_size": vocab_size,
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "max_position_embeddings": shape.max_positions,
        **ids,
    }
    if shape.tie_embeddings is not None:
        common["tie_word_embeddings"] = shape.tie_embeddings
    extra: dict = {
        "llama": {"num_key_value_heads": shape.kv_heads},
        "mistral": {"num_key_value_heads": shape.kv_heads, "sliding_window": None},
        "qwen2": {"num_key_value_heads": shape.kv_heads, "tie_word_embeddings": True},
        "qwen3": {"num_key_value_heads": shape.kv_heads, "head_dim": shape.head_dim},
        "gemma2": {
            "num_key_value_heads": shape.kv_heads,
            "head_dim": shape.head_dim,
            "query_pre_attn_scalar": shape.head_dim,
            "sliding_window": max(8, shape.max_positions // 4),  # shorter than a record: both layer kinds matter
        },
        "phi3": {"num_key_value_heads": shape.kv_heads},
        "gpt_neox": {"rotary_pct": 0.25, "attention_dropout": 0.0, "hidden_dropout": 0.0},
    }
    if family not in extra:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    return AutoConfig.for_model(family, **{**extra[family], **common})  # an explicit tie overrides the family's


def random_model(config, *, seed: int = 0, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """A causal LM with the family's own random initialisation, created directly on `device` in `dtype` (an 8B
    model is initialised on the GPU in seconds; on a CPU first it would take minutes and 32 GB)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        except TypeError:  # a transformers that still spells it `torch_dtype`
            model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    return model.eval()


def save_model_dir(
    model,
    tokenizer,
    out: str | Path,
    *,
    pad_token: bool = True,
    shard_bytes: int | None = None,
    generation: dict | None = None,
) -> Path:
    """Write a Hugging Face model directory as checkpoints come: `shard_bytes` splits the weights into
    safetensors shards with an index; `pad_token=False` saves a tokenizer without one; `generation` writes
    those sampling defaults into `generation_config.json` (chat models ship one)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": shard_bytes} if shard_bytes else {}
    model.save_pretrained(str(out), **kwargs)
    if not pad_token:
        tokenizer = _without_pad(tokenizer)
    tokenizer.save_pretrained(str(out))
    if generation is not None:
        path = out / "generation_config.json"
        cfg = json.loads(path.read_text()) if path.is_file() else {}
        cfg.update(generation)
        path.write_text(json.dumps(cfg, indent=2))
    return out


def _without_pad(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.pad_token = None
    return tok


def build_family_dir(
    family: str,
    tokenizer,
    out: str | Path,
    shape: Shape = Shape(),
    *,
    seed: int = 0,
    pad_token: bool = True,
    shard_bytes: int | None = None,
    generation: dict | None = None,
) -> Path:
    """A tiny random model of `family` for `tokenizer`, saved as a model directory (see `save_model_dir`)."""
    config = family_config(
        family,
        len(tokenizer),
        shape,
        bos=tokenizer.bos_token_id,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id if pad_token else None,
    )
    model = random_model(config, seed=seed)
    return save_model_dir(model, tokenizer, out, pad_token=pad_token, shard_bytes=shard_bytes, generation=generation)


def parameter_count(model) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
