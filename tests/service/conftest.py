"""Fixtures of the service tests: migrated temporary databases, runtimes, and a live server (uvicorn in a
thread with the real thread dispatcher) shared per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from unlearnd.api.db import upgrade_to_head
from unlearnd.api.settings import Settings
from unlearnd.worker.runtime import Runtime

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


@pytest.fixture(scope="session")
def service_world(request: pytest.FixtureRequest):
    """The tiny PII world: the suite's shared `tiny_world` fixture when present, else built once and cached
    under .cache/ keyed by its spec (build_world reuses a directory built from the same spec)."""
    try:
        return request.getfixturevalue("tiny_world")
    except pytest.FixtureLookupError:
        from unlearnd.core.worlds.pii import build_world, tiny_spec

        root = Path(__file__).resolve().parents[2] / ".cache" / "service-tiny-world"
        return build_world(root, tiny_spec(), log=lambda _m: None)


@pytest.fixture(scope="session")
def job_config() -> dict:
    """Request fields (method, init, config) for a job of a few seconds on the tiny world."""
    from unlearnd.core.config import UnlearnConfig

    try:
        from tests.conftest import fast_config
    except ImportError:
        try:
            from conftest import fast_config  # tests/ imported as a rootdir, not a package
        except ImportError:
            fast_config = UnlearnConfig
    return config_body(fast_config())


def config_body(config) -> dict:
    from unlearnd.api.schemas import ConfigIn

    values = config.to_dict()
    tunables = {k: v for k, v in values.items() if k in ConfigIn.model_fields and v is not None}
    return {"method": values["method"], "init": values["init"], "config": tunables}
