"""What LoRA-serving engines accept, and a check that an exported adapter passes it.

An adapter that loads in peft can still be refused by the engine that serves it. vLLM (and engines built the
same way: LoRAX, SGLang, TGI's multi-LoRA) load a plain LoRA on the attention and MLP projections only, with
no bias, no `modules_to_save` (whole trained copies of layers), and a rank their kernels were compiled for
(`--max-lora-rank`: 8, 16, 32, 64, 128, 256, 320, 512). Padding a LoRA with zero rows is exact, so a rank in
between is padded up to the next allowed one (core/export.py).
"""

from __future__ import annotations

import json
from pathlib import Path

SERVING_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)

_LLAMA_STYLE = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
# Per `config.model_type`: the projections a serving engine maps LoRA weights onto (vLLM packs q/k/v and
# gate/up of Llama-style models itself, so the unpacked names are accepted). GPT-Neo is not served by vLLM at
# all; its projections are listed for engines that run any transformers model (TGI, LoRAX).
_LLAMA_FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2", "granite")
SERVING_TARGETS: dict[str, frozenset[str]] = {
    **dict.fromkeys(_LLAMA_FAMILIES, _LLAMA_STYLE),
    "phi3": frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
    "gpt_neox": frozenset({"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}),
    "gpt2": frozenset({"c_attn", "c_proj", "c_fc"}),
    "gpt_neo": frozenset({"q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"}),
    "gptj": frozenset({"q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"}),
}
_NEVER = ("embed", "lm_head", "wte", "wpe", "norm", "ln_")


def serving_rank(rank: int) -> int:
    """The smallest servable rank that holds `rank` (zero rows pad the rest); a rank above 512 stays as it is
    and fails `adapter_problems`."""
    return next((r for r in SERVING_RANKS if r >= rank), rank)


def adapter_problems(adapter_dir: str | Path, model_type: str) -> list[str]:
    """Why a LoRA-serving engine would refuse this PEFT adapter directory (empty: it would load it)."""
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    problems = []
    if cfg.get("peft_type") != "LORA":
        problems.append(f"peft_type {cfg.get('peft_type')!r} is not LORA")
    rank = cfg.get("r")
    if rank not in SERVING_RANKS:
        problems.append(f"rank {rank} is not one of {SERVING_RANKS}")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias {cfg.get('bias')!r}: serving engines load no LoRA bias")
    if cfg.get("modules_to_save"):
        problems.append(f"modules_to_save {cfg['modules_to_save']}: whole trained layers are not servable")
    for flag in ("use_dora", "layer_replication"):
        if cfg.get(flag):
            problems.append(f"{flag} is set")
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    allowed = SERVING_TARGETS.get(model_type)
    for t in targets:
        if allowed is not None and t not in allowed:
            problems.append(f"target module {t!r} is not a {model_type} projection a serving engine adapts")
        elif allowed is None and any(k in t for k in _NEVER):
            problems.append(f"target module {t!r} is an embedding, LM head or norm")
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        for key in f.keys():
            if not key.endswith((".lora_A.weight", ".lora_B.weight")):
                problems.append(f"tensor {key!r} is not a LoRA factor")
                continue
            shape = f.get_slice(key).get_shape()
            r_dim = shape[0] if key.endswith(".lora_A.weight") else shape[1]
            if r_dim != rank:
                problems.append(f"tensor {key!r} has rank {r_dim}, the config says {rank}")
    return problems
