"""GPU readiness on a CPU machine: the bf16 autocast path is the same code switched by precision/device."""

import os

import pytest
import torch

from tests.conftest import fast_config
from unlearnd.core.config import UnlearnConfig
from unlearnd.core.device import autocast, resolve_precision, use_precision
from unlearnd.core.errors import InvalidInput
from unlearnd.core.pipeline import run_forget


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
    assert r.report["steps"] > 0 and r.report["after"]["forget"]["extraction"] == 0.0
    # the exported adapter is checked in fp32 against the trained weights: exact whatever the run's precision
    assert r.report["adapter"]["export_max_abs_diff"] <= 1e-4
    assert r.report["config"]["precision"] == "bf16"


def test_usable_cpus_honours_affinity_and_a_cgroup_quota(tmp_path):
    from unlearnd.core.device import usable_cpus

    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert usable_cpus(cpu_max) == affinity
    cpu_max.write_text("50000 100000\n")  # half a CPU still gets one thread
    assert usable_cpus(cpu_max) == 1
    cpu_max.write_text(f"{(affinity + 8) * 100000} 100000\n")  # a quota above the affinity does not add CPUs
    assert usable_cpus(cpu_max) == affinity
    assert usable_cpus(tmp_path / "missing") == affinity


def test_set_cpu_threads_uses_the_configured_number_else_the_capped_default():
    from unlearnd.core import device

    before = torch.get_num_threads()
    try:
        assert device.set_cpu_threads(1) == 1 and torch.get_num_threads() == 1
        expected = min(device._TORCH_DEFAULT_THREADS, device.usable_cpus())
        assert device.set_cpu_threads(None) == expected and torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


def test_in_own_thread_returns_the_result_and_re_raises_in_the_caller():
    import threading

    from unlearnd.core.device import in_own_thread

    assert in_own_thread(lambda x, y=0: (threading.current_thread().name, x + y), 2, y=3) == ("torch-work", 5)
    with pytest.raises(InvalidInput, match="boom"):
        in_own_thread(lambda: (_ for _ in ()).throw(InvalidInput("boom")))


def test_device_switch_picks_cuda_and_bf16_weights_when_a_gpu_is_present(monkeypatch):
    """The GPU path is chosen by the device alone: cuda when present, bf16 weights and bf16 autocast there."""
    from unlearnd.core.device import pick_device
    from unlearnd.core.modeling import weights_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    device = pick_device()
    assert device.type == "cuda" and weights_dtype(device) == torch.bfloat16
    assert resolve_precision(device) == "bf16"
    assert pick_device("cpu").type == "cpu" and weights_dtype(torch.device("cpu")) == torch.float32
