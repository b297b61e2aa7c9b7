"""Loading a local Hugging Face causal LM, its weights fingerprint, and the LoRA target modules per family."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from unlearnd.core.device import pick_device
from unlearnd.core.errors import InvalidInput, ModelLoadError
from unlearnd.core.hashing import update_from_file

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

# Default LoRA targets by `config.model_type`: every attention and MLP projection, as in the FILA paper.
TARGET_MODULES: dict[str, list[str]] = {
    "gpt_neo": ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}
_LLAMA_STYLE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
for _family in (
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "olmo",
    "olmo2",
    "granite",
):
    TARGET_MODULES[_family] = _LLAMA_STYLE


@dataclass
class LoadedModel:
    """A base model and its tokenizer, loaded once and reusable across jobs (the worker caches it)."""

    model: nn.Module
    tokenizer: object
    source: str
    fingerprint: str
    device: torch.device

    @property
    def model_type(self) -> str:
        return getattr(self.model.config, "model_type", "")


def context_length(model: nn.Module) -> int | None:
    """Positions the model can attend over, from its config (the names differ by family); None if unknown."""
    cfg = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def weight_files(source: str | Path) -> list[Path]:
    root = Path(source)
    if not root.is_dir():
        raise ModelLoadError(f"model source {str(source)!r} is not a directory")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise ModelLoadError(f"no weight files (*.safetensors, *.bin) in {root}")
    return files


def weights_fingerprint(source: str | Path) -> str:
    """sha256 over the weight files' names and bytes: which exact weights an adapter was made for."""
    h = hashlib.sha256()
    for f in weight_files(source):
        h.update(f.name.encode() + b"\0")
        update_from_file(h, f)
    return h.hexdigest()


def weights_dtype(device: torch.device) -> torch.dtype:
    """bf16 weights on CUDA (half the memory, tensor cores), fp32 elsewhere (CPU bf16 matmuls are slow)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_model(
    source: str | Path,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    devices: list[str] | None = None,
) -> LoadedModel:
    """Load a local HF causal-LM directory (no hub access: `local_files_only`), in fp32 on CPU and bf16
    weights on CUDA. With several `devices` (a worker that owns several GPUs: `UNLEARND_WORKER_GPUS`) the
    decoder layers are split across them (core/placement.py). Anything that is not a loadable causal LM raises
    ModelLoadError with the reason."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fingerprint = weights_fingerprint(source)
    if not (Path(source) / "config.json").is_file():
        raise ModelLoadError(f"{source} has no config.json: not a Hugging Face model directory")
    placed = devices is not None and len(devices) > 1
    dev = pick_device(devices[0] if devices else device)
    dtype = dtype or weights_dtype(dev)  # `dtype`: tests run the GPU's bf16 weights on a CPU
    try:
        # transformers picks the attention kernel: SDPA (flash / memory-efficient on a GPU) where the family
        # has it, eager otherwise (GPT-Neo). Padded batches and left-padded decoding are tested on both.
        kwargs = {"device_map": _plan(source, devices)} if placed else {}
        model = AutoModelForCausalLM.from_pretrained(str(source), local_files_only=True, dtype=dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except Exception as e:  # transformers raises many types (OSError, ValueError, KeyError) for bad dirs
        reason = " ".join(str(e).split())[:300]  # one line: it ends up in a job event or a CLI error
        raise ModelLoadError(f"cannot load a causal LM from {source}: {type(e).__name__}: {reason}") from None
    fuse_activations(model)
    if placed:
        from unlearnd.core.placement import dispatch, input_device, is_dispatched

        if not is_dispatched(model):  # every part on one physical device: transformers added no hooks
            dispatch(model, kwargs["device_map"])
        dev = input_device(model)
        model.eval()
    else:
        model.to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, str(source), fingerprint, dev)


def _plan(source: str | Path, devices: list[str]) -> dict:
    """The device map of `source` across `devices`, planned on a weightless (meta) copy of the model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from unlearnd.core.placement import plan_device_map

    config = AutoConfig.from_pretrained(str(source), local_files_only=True)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return plan_device_map(skeleton, [_device_name(d) for d in devices])


def _device_name(device: str) -> str | int:
    """accelerate's spelling: a GPU by its index, anything else by name."""
    d = torch.device(device)
    return d.index if d.type == "cuda" and d.index is not None else str(d)


def fuse_activations(model: nn.Module) -> int:
    """Swap the tanh-approximated GELU written as Python arithmetic (`gelu_new`, `gelu_fast`: GPT-2, GPT-Neo,
    GPT-J, Phi) for torch's fused kernel of the same formula (`gelu_pytorch_tanh`): one op instead of about
    ten, forward and backward, 11 % of a demo unlearning step; outputs differ by < 3e-7. Returns the count."""
    from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation

    swapped = 0
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, NewGELUActivation | FastGELUActivation):
                setattr(module, name, GELUTanh())
                swapped += 1
    return swapped


def default_target_modules(model: nn.Module) -> list[str]:
    """The family's projections, else every Linear/Conv1D below the transformer blocks (not the LM head)."""
    family = getattr(getattr(model, "config", None), "model_type", "")
    if family in TARGET_MODULES:
        return list(TARGET_MODULES[family])
    names = set()
    for name, module in model.named_modules():
        if is_target_layer(module) and "lm_head" not in name and "embed" not in name:
            names.add(name.rsplit(".", 1)[-1])
    if not names:
        raise InvalidInput(f"no Linear layers to adapt in model type {family!r}")
    return sorted(names)


def is_target_layer(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, nn.Linear | Conv1D)


def find_targets(model: nn.Module, target_modules: list[str]) -> dict[str, nn.Module]:
    """Full module names matching the target suffixes, as peft matches them (by the last name component)."""
    found = {
        name: m
        for name, m in model.named_modules()
        if is_target_layer(m) and name.rsplit(".", 1)[-1] in target_modules and "lm_head" not in name
    }
    if not found:
        raise InvalidInput(f"none of the target modules {target_modules} exist in this model")
    return found
