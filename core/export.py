"""Adapters that apply to the *unmodified* base model, as standard PEFT LoRA directories.

A delta on one weight is a list of components `(A, B, s)` meaning `ΔW = Σ s·B·A`. A FILA run trains (A, B)
on the residual base `W − s·B₀·A₀`, so its delta on the original W is `s·B·A − s·B₀·A₀`: the rank-2r LoRA
`A' = [A; A₀]`, `B' = [B, −B₀]` (what peft calls `path_initial_model_for_weight_conversion`). A cumulative
version prepends the previous version's components. Every component's scale is folded into B relative to the
exported scale, so any mix of ranks and alphas exports exactly. The written rank is padded with zero rows up to
one that LoRA-serving engines accept (core/serving.py), and zero rows are dropped again when a version is read
back, so a cumulative version grows by the ranks actually trained, not by the padding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from unlearnd.core.errors import InvalidInput

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
PREFIX = "base_model.model."


@dataclass
class Component:
    a: torch.Tensor  # r × in
    b: torch.Tensor  # out × r
    scale: float

    def delta(self) -> torch.Tensor:
        return self.scale * (self.b.float() @ self.a.float())


Delta = dict[str, list[Component]]  # module name in the base model → components


def rank_of(delta: Delta) -> int:
    """The LoRA rank that holds `delta`: the largest total rank of one module's components (0 if empty)."""
    return max((sum(c.a.size(0) for c in comps) for comps in delta.values()), default=0)


def exported_rank(delta: Delta) -> int:
    """The rank `write_adapter` writes: `rank_of`, padded up to a rank serving engines accept."""
    from unlearnd.core.serving import serving_rank

    return serving_rank(rank_of(delta))


def stacked(comps: list[Component], scale: float, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Components as one LoRA pair under scaling `scale`: A (rank × in) and B (out × rank), each component's
    own scale folded into its B, zero-padded to `rank` (a module with a smaller total rank)."""
    a = torch.cat([c.a.float() for c in comps], dim=0)
    b = torch.cat([c.b.float() * (c.scale / scale) for c in comps], dim=1)
    if a.size(0) < rank:
        a = torch.cat([a, a.new_zeros(rank - a.size(0), a.size(1))])
        b = torch.cat([b, b.new_zeros(b.size(0), rank - b.size(1))], dim=1)
    return a, b


def write_adapter(
    out_dir: Path,
    delta: Delta,
    *,
    base_model: str,
    target_modules: list[str],
    fan_in_fan_out: bool,
    scale: float,
) -> Path:
    """Write `delta` as one LoRA of rank `exported_rank(delta)` with scaling `scale` (α' = scale·r'). Modules
    whose total rank is smaller are padded with zero rows, so one `r` serves the whole adapter and engines
    that accept only a few ranks (8, 16, 32, …) load it."""
    from safetensors.torch import save_file

    from unlearnd.core.lora import lora_config

    if not delta:
        raise InvalidInput("nothing to export: the delta has no modules")
    rank = exported_rank(delta)
    tensors = {}
    for name, comps in delta.items():
        a, b = stacked(comps, scale, rank)
        tensors[f"{PREFIX}{name}.lora_A.weight"] = a.contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = b.contiguous()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = lora_config(rank, scale * rank, sorted(set(target_modules)), fan_in_fan_out)
    cfg.base_model_name_or_path = base_model
    cfg.save_pretrained(str(out_dir))
    # Only one metadata key: safetensors writes metadata in hash-map order, and more than one key would make
    # the bytes (and so the adapter's sha256) differ between identical runs.
    save_file(tensors, str(out_dir / WEIGHTS_NAME), metadata={"format": "pt"})
    return out_dir


def read_adapter(adapter_dir: Path) -> tuple[Delta, dict]:
    """Components and config of a PEFT LoRA directory (as written by `write_adapter`, or by peft itself)."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    cfg_path = adapter_dir / CONFIG_NAME
    if not cfg_path.is_file() or not (adapter_dir / WEIGHTS_NAME).is_file():
        raise InvalidInput(f"{adapter_dir} is not a PEFT adapter directory")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type") != "LORA":
        raise InvalidInput(f"adapter {adapter_dir} is {cfg.get('peft_type')}, not LORA")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scale = alpha / (r**0.5) if cfg.get("use_rslora") else alpha / r
    tensors = load_file(str(adapter_dir / WEIGHTS_NAME))
    delta: Delta = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        name = key.removeprefix(PREFIX).removesuffix(".lora_A.weight")
        b = tensors[key.replace(".lora_A.weight", ".lora_B.weight")]
        delta[name] = [Component(*_without_zero_rows(a.float(), b.float()), scale)]
    return delta, cfg


def _without_zero_rows(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the rank-1 terms whose A row and B column are both zero (padding): the product is unchanged."""
    keep = (a != 0).any(dim=1) | (b != 0).any(dim=0)
    return a[keep], b[:, keep]
