"""Fixtures of the console, report and SDK tests: ONE live server with ONE real finished job (the README's
SDK example runs it on the tiny world), shared by every test here, and one headless Chromium."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.service.support import ADMIN_KEY, Live, start_live, stop_live

README = Path(__file__).resolve().parents[2] / "README.md"
SUBJECT = "customer-8812"


def readme_sdk_example() -> str:
    """The Python block after the README's `<!-- sdk-example -->` marker, as a reader would copy it."""
    text = README.read_text()
    match = re.search(r"<!-- sdk-example -->\s*```python\n(.*?)```", text, flags=re.S)
    assert match, "the README lost its SDK example"
    return match.group(1)


@dataclass
class Finished:
    live: Live
    request: dict
    audit: dict
    workdir: Path
    output: str  # what the README example printed


@pytest.fixture(scope="session")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_world) -> Iterator[Finished]:
    """A model named `support-bot` (the tiny world, with a short step budget as its default), and the
    README's SDK example run against it in a fresh directory: a real job, to its audit and report."""
    live = start_live(tmp_path_factory.mktemp("console") / "data")
    try:
        from unlearnd import Client, read_jsonl

        with Client(live.url, ADMIN_KEY) as client:
            client.register_model(
                "support-bot",
                str(tiny_world.model_dir),
                retain=read_jsonl(tiny_world.retain_path),
                holdout=read_jsonl(tiny_world.holdout_path),
                default_config={"max_steps": 40, "eval_every": 4},
            )
        workdir = tmp_path_factory.mktemp("sdk-example")
        shutil.copy(tiny_world.forget_path, workdir / "forget.jsonl")
        out = io.StringIO()
        env = {"UNLEARND_URL": live.url, "UNLEARND_API_KEY": ADMIN_KEY}
        with _chdir_env(workdir, env), contextlib.redirect_stdout(out):
            exec(compile(readme_sdk_example(), "README.md (SDK example)", "exec"), {"__name__": "readme"})
        requests = live.client.get("/v1/forget-requests").raise_for_status().json()["data"]
        request = requests[0]
        audit = live.client.get(f"/v1/audits/{request['audit_id']}").raise_for_status().json()
        yield Finished(live, request, audit, workdir, out.getvalue())
    finally:
        stop_live(live)


@contextlib.contextmanager
def _chdir_env(path: Path, env: dict[str, str]) -> Iterator[None]:
    old_cwd, old_env = Path.cwd(), {k: os.environ.get(k) for k in env}
    os.chdir(path)
    os.environ.update(env)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def chromium_paths() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Debian's headless Chromium driven by Selenium through Debian's chromedriver (.ci/run installs both).
    Missing, the browser tests skip, or fail when CI=true."""
    paths = chromium_paths()
    if paths is None:
        reason = "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = paths[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(paths[1]))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
