"""Integration tests run against the real services: PostgreSQL (127.0.0.1:5432, user postgres) and Redis
(127.0.0.1:6379), overridable with UNLEARND_TEST_PG_URL / UNLEARND_TEST_REDIS_URL.

Unreachable services skip these tests with the reason, except under CI=true, where they fail the run: CI
must not go green without having exercised the production path. Each module gets its own PostgreSQL database
(dropped afterwards) and its own Redis key prefix and queue name, so parallel runs on one machine (several
engineers, one Redis) never see each other's messages.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from .support import PG_ADMIN_URL, REDIS_URL, Broker, create_database, drop_database, redis_client


def _unreachable() -> str | None:
    problems = []
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL.replace("+psycopg", ""), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as e:
        problems.append(f"PostgreSQL at {PG_ADMIN_URL} unreachable ({type(e).__name__}: {e})")
    try:
        redis_client().ping()
    except Exception as e:
        problems.append(f"Redis at {REDIS_URL} unreachable ({type(e).__name__}: {e})")
    return "; ".join(problems) or None


@pytest.fixture(scope="session")
def services() -> None:
    problem = _unreachable()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"integration services down under CI=true: {problem}", pytrace=False)
    pytest.skip(f"integration services unavailable: {problem}")


@pytest.fixture(autouse=True)
def _require_services(request: pytest.FixtureRequest) -> None:
    """Tests marked `integration` need both services (the deployment-file checks need neither)."""
    if request.node.get_closest_marker("integration"):
        request.getfixturevalue("services")


@pytest.fixture(scope="module")
def pg_url(services: None) -> Iterator[str]:
    """A fresh PostgreSQL database for the module (not migrated: the app or the test migrates it)."""
    name = f"unlearnd_test_{uuid.uuid4().hex[:10]}"
    url = create_database(name)
    yield url
    drop_database(name)


@pytest.fixture(scope="module")
def broker(services: None) -> Iterator[Broker]:
    """A private namespace on the shared Redis: key prefix + queue name; its keys are deleted afterwards."""
    tag = uuid.uuid4().hex[:8]
    b = Broker(url=REDIS_URL, prefix=f"unlearnd-test-{tag}:", queue=f"gpu-{tag}")
    yield b
    b.flush()
