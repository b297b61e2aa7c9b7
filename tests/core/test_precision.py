"""GPU readiness on a CPU machine: the bf16 autocast path is the same code switched by precision/device."""

import pytest
import torch

from core.config import UnlearnConfig
from core.device import autocast, resolve_precision, use_precision
from core.errors import InvalidInput
from core.pipeline import run_forget
from tests.conftest import fast_config


def test_auto_precision_is_bf16_on_cuda_and_fp32_on_cpu():
    assert resolve_precision(torch.device("cuda")) == "bf16"
    assert resolve_precision(torch.device("cpu")) == "fp32"
    with use_precision("bf16"):
        assert resolve_precision(torch.device("cpu")) == "bf16"
        with autocast(torch.device("cpu")):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert resolve_precision(torch.device("cpu")) == "fp32"  # the setting does not leak out of the run
    with pytest.raises(InvalidInput, match="precision"):
        UnlearnConfig(precision="fp8")


@pytest.mark.slow
def test_bf16_autocast_run_forgets_and_exports_exactly(tiny_loaded, tiny_world, tmp_path):
    seen = []

    def progress(phase, step, total, metrics):
        seen.append(resolve_precision(tiny_loaded.device))

    r = run_forget(
        tiny_loaded,
        tiny_world.forget,
        tiny_world.retain,
        tiny_world.holdout,
        fast_config(precision="bf16"),
        out_dir=tmp_path,
        progress=progress,
    )
    assert set(seen) == {"bf16"}
    assert r.reached and r.report["after"]["forget"]["extraction"] == 0.0
    # the exported adapter is checked in fp32 against the trained weights: exact whatever the run's precision
    assert r.report["adapter"]["export_max_abs_diff"] <= 1e-4
    assert r.report["config"]["precision"] == "bf16"
