"""LoRA on a model through peft: wrapping, FILA's frozen half, reading the factors back, and putting the model
back as it was (so a cached base model can serve the next job)."""

from __future__ import annotations

import torch
from torch import nn


def is_conv1d(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as (out × in) whatever the layer stores: GPT-2's Conv1D keeps it transposed."""
    return module.weight.T if is_conv1d(module) else module.weight


@torch.no_grad()
def add_to_weight(module: nn.Module, delta: torch.Tensor) -> None:
    """W += delta, with delta given as (out × in), computed in fp32 and cast to the layer's dtype."""
    w = module.weight
    d = delta.T if is_conv1d(module) else delta
    w.copy_((w.float() + d.to(w.device, torch.float32)).to(w.dtype))


def lora_config(rank: int, alpha: float, target_modules: list[str], fan_in_fan_out: bool, init: bool | str = True):
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=target_modules,
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=fan_in_fan_out,
        init_lora_weights=init,
        task_type="CAUSAL_LM",
    )


def wrap(model: nn.Module, rank: int, alpha: float, target_modules: list[str], fan_in_fan_out: bool, seed: int):
    """peft LoRA with peft's default init (Kaiming A, zero B), seeded so runs are reproducible."""
    from peft import get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(model, lora_config(rank, alpha, target_modules, fan_in_fan_out))


def lora_layers(peft_model: nn.Module) -> dict[str, nn.Module]:
    """peft LoRA layers by the module name in the base model (e.g. `transformer.h.0.attn.attention.q_proj`)."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, m in peft_model.named_modules():
        if isinstance(m, LoraLayer):
            out[name.removeprefix("base_model.model.")] = m
    return out


@torch.no_grad()
def set_factors(layer: nn.Module, a: torch.Tensor, b: torch.Tensor, adapter: str = "default") -> None:
    layer.lora_A[adapter].weight.copy_(a)
    layer.lora_B[adapter].weight.copy_(b)


def get_factors(layer: nn.Module, adapter: str = "default") -> tuple[torch.Tensor, torch.Tensor]:
    return (
        layer.lora_A[adapter].weight.detach().float().cpu().clone(),
        layer.lora_B[adapter].weight.detach().float().cpu().clone(),
    )


def scaling_of(layer: nn.Module, adapter: str = "default") -> float:
    return float(layer.scaling[adapter])


def freeze_rows_from(layer: nn.Module, rank: int, adapter: str = "default") -> int:
    """Zero the gradient of A's rows and B's columns from `rank` on, so AdamW (without weight decay) never
    moves them: FILA's frozen half and the previous version's components. Returns the frozen element count."""
    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    a_mask = torch.ones_like(a)
    a_mask[rank:] = 0
    b_mask = torch.ones_like(b)
    b_mask[:, rank:] = 0
    a.register_hook(lambda g: g * a_mask)
    b.register_hook(lambda g: g * b_mask)
    return int((a_mask == 0).sum() + (b_mask == 0).sum())
