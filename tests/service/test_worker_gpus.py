"""UNLEARND_WORKER_GPUS: a worker that owns several GPUs places each model across all of them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from unlearnd.api.settings import Settings
from unlearnd.worker.model_cache import ModelCache


def test_worker_gpus_become_the_devices_a_model_is_placed_across(tmp_path):
    assert Settings(data_dir=tmp_path).worker_devices is None
    assert Settings(data_dir=tmp_path, worker_gpus="0, 1,3").worker_devices == ["cuda:0", "cuda:1", "cuda:3"]
    for bad in ("a", "0;1", "-1", "0,"):
        with pytest.raises(ValidationError):
            Settings(data_dir=tmp_path, worker_gpus=bad)


def test_the_model_cache_loads_with_the_workers_devices_and_keys_by_them(monkeypatch, tmp_path):
    import unlearnd.core.modeling

    calls = []
    monkeypatch.setattr(
        unlearnd.core.modeling, "load_model", lambda path, device, devices: calls.append(devices) or object()
    )
    cache = ModelCache(capacity=2)
    for devices in (["cuda:0", "cuda:1"], ["cuda:0", "cuda:1"], None):
        with cache.borrow(str(tmp_path), None, devices=devices):
            pass
    assert calls == [["cuda:0", "cuda:1"], None]  # the second borrow was a hit; other devices are another model
