"""One model across several devices: a worker that owns several GPUs loads a model none of them holds alone.

The decoder layers are split into contiguous, equal runs, one per device (pipeline-style placement, what
`device_map="balanced"` does); the modules before the layers (embeddings) go to the first device, those after
(final norm, LM head) to the last, and a tied LM head stays with the embeddings whose weight it is. accelerate's
hooks move activations between devices and hand the outputs back on the first device, so core's code is the
same as on one device: each LoRA factor, Fisher accumulator and SVD lives with its layer (core/fila.py).
Only one device computes at a time: this buys memory, not speed.
"""

from __future__ import annotations

import torch
from torch import nn

Device = str | int


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and module of the model's stack of decoder blocks: its largest `ModuleList`."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if best is None or size > sum(p.numel() for p in best[1].parameters()):
                best = (name, module)
    if best is None:
        raise ValueError("the model has no stack of decoder layers to split")
    return best


def plan_device_map(model: nn.Module, devices: list[Device]) -> dict[str, Device]:
    """A device map (module name → device) putting `len(devices)` equal runs of decoder layers on the devices
    in order. Works on a model built on the meta device (no memory), so a worker plans before it loads."""
    if not devices:
        raise ValueError("no devices to place the model on")
    path, layers = decoder_layers(model)
    n = len(layers)
    plan: dict[str, Device] = {f"{path}.{i}": devices[i * len(devices) // n] for i in range(n)}
    first, last = devices[0], devices[-1]
    parent_path, _, list_name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    after = False
    for name, _child in parent.named_children():  # the layers' siblings, in definition (= forward) order
        if name == list_name:
            after = True
            continue
        plan[f"{parent_path}.{name}" if parent_path else name] = last if after else first
    tied = _tied_output_embeddings(model)
    for name, child in model.named_children():  # the LM head and anything else outside the base model
        if parent_path and (name == parent_path or parent_path.startswith(f"{name}.")):
            continue
        plan[name] = first if (tied and child is model.get_output_embeddings()) else last
    return plan


def _tied_output_embeddings(model: nn.Module) -> bool:
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    return out is not None and inp is not None and out.weight is inp.weight


def is_dispatched(model: nn.Module) -> bool:
    """Whether accelerate's hooks place this model (transformers adds them when a device map names several
    devices)."""
    return hasattr(model, "_hf_hook") or any(hasattr(m, "_hf_hook") for m in model.modules())


def dispatch(model: nn.Module, plan: dict[str, Device]) -> nn.Module:
    """Attach accelerate's placement hooks for `plan`, moving each part to its device. transformers does this
    itself when a plan names several physical devices; this also does it when they are one (two "devices"
    of one CPU in the tests), so the hooks run the same way everywhere."""
    from accelerate import dispatch_model

    main = next(iter(plan.values())) if plan else "cpu"
    return dispatch_model(model, device_map=plan, main_device=main, force_hooks=True)


def input_device(model: nn.Module) -> torch.device:
    """Where a placed model takes its inputs (and, through accelerate's hooks, gives its outputs back)."""
    return model.get_input_embeddings().weight.device
