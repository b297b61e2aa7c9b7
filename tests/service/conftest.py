"""Fixtures of the service tests: migrated temporary databases, runtimes, and a live server (uvicorn in a
thread with the real thread dispatcher) shared per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from api.db import upgrade_to_head
from api.settings import Settings
from worker.runtime import Runtime

from .support import Live, make_settings, start_live, stop_live


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = make_settings(tmp_path / "data")
    upgrade_to_head(s)
    return s


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime.build(settings)
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    lv = start_live(tmp_path_factory.mktemp("live") / "data")
    yield lv
    stop_live(lv)
