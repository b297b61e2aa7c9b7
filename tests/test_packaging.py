"""One namespace (issue 15, item 6): the installed package is `unlearnd` alone — the repository's api/, core/,
worker/, cli/ and migrations/ install as unlearnd.api, unlearnd.core, ... — so `pip install .` puts no top-level
api, core, worker, cli or migrations module on the path.

The wheel is built offline from a copy of the sources (`pip wheel --no-build-isolation`: the venv's own
setuptools) and installed into a fresh venv; its imports run in a temporary directory, without the repository on
sys.path (the fresh venv reaches the dependencies through a .pth line to this venv's site-packages, which is
added as a plain path: this venv's editable finder is not activated there).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER = ("api", "core", "worker", "cli", "migrations")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def _source_packages() -> dict[str, Path]:
    """Every folder of the installed tree that holds Python files, by the package name it should install as."""
    found = {}
    for top in ("unlearnd", *SERVER):
        for init_dir in sorted({p.parent for p in (ROOT / top).rglob("*.py")}):
            if "__pycache__" in init_dir.parts:
                continue
            rel = init_dir.relative_to(ROOT / top).parts
            name = ".".join(("unlearnd", *(() if top == "unlearnd" else (top,)), *rel))
            found[name] = init_dir
    return found


def test_rewrite_tool_finds_no_old_import_path():
    """After a merge, `python tools/namespace_rewrite.py` rewrites what still says `from core...` & co."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "namespace_rewrite.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"run tools/namespace_rewrite.py:\n{out.stdout}{out.stderr}"


def test_pyproject_lists_every_package_and_maps_the_server_folders():
    assert SETUPTOOLS["package-dir"] == {f"unlearnd.{name}": name for name in SERVER}
    missing = sorted(set(_source_packages()) - set(SETUPTOOLS["packages"]))
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"
    assert PYPROJECT["project"]["scripts"]["unlearnd"] == "unlearnd.cli.main:main"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this venv")
    src = tmp_path_factory.mktemp("src")
    shutil.copy2(ROOT / "pyproject.toml", src / "pyproject.toml")
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for top in ("unlearnd", *SERVER):
        shutil.copytree(ROOT / top, src / top, ignore=junk)
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
        + ["-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    [whl] = out.glob("unlearnd-*.whl")
    return whl


def test_wheel_holds_only_the_unlearnd_namespace(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    [dist_info] = [t for t in top if t.endswith(".dist-info")]
    assert top == {"unlearnd", dist_info}
    assert zipfile.ZipFile(wheel).read(f"{dist_info}/top_level.txt").decode().split() == ["unlearnd"]
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "unlearnd = unlearnd.cli.main:main" in entry_points

    # Every source file of the installed tree, under its new name; the report template and the console's files.
    expected = set()
    for package, folder in _source_packages().items():
        expected |= {f"{package.replace('.', '/')}/{p.name}" for p in folder.glob("*.py")}
    for data in [*(ROOT / "api" / "report").glob("*.j2"), *(ROOT / "api" / "console" / "static").rglob("*")]:
        if data.is_file():
            expected.add(f"unlearnd/{data.relative_to(ROOT).as_posix()}")
    assert "unlearnd/api/report/report.html.j2" in expected and "unlearnd/api/console/static/index.html" in expected
    missing = sorted(expected - set(names))
    assert not missing, f"not in the wheel: {missing}"
    assert not [n for n in names if n.startswith(("unlearnd/bench/", "unlearnd/tests/"))]


CHECKS = """
import importlib.util, json, os, sys
repo = {repo!r}
assert repo not in [os.path.abspath(p or '.') for p in sys.path], sys.path
top = {{name: importlib.util.find_spec(name) is not None for name in {server!r}}}
import unlearnd.api.app, unlearnd.api.report, unlearnd.cli.main, unlearnd.worker.celery_app
from importlib.resources import files
print(json.dumps({{
    "top_level": top,
    "app": unlearnd.api.app.__file__,
    "has_app": hasattr(unlearnd.api.app, "app"),
    "torch": "torch" in sys.modules,
    "template": files("unlearnd.api.report").joinpath("report.html.j2").is_file(),
    "console": files("unlearnd.api.console").joinpath("static", "index.html").is_file(),
    "migrations": sorted(p.name for p in files("unlearnd.migrations").joinpath("versions").iterdir()
                         if p.name.endswith(".py")),
}}))
"""

SDK_ONLY = """
import sys, unlearnd
from unlearnd import Client
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'fastapi', 'sqlalchemy')
               or m.split('.')[0] in {server!r} or m.split('.')[:2] in [['unlearnd', s] for s in {server!r}])
assert not heavy, heavy
print('ok')
"""


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; the dependencies come from this venv's site-packages, after it."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", purelib, str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    (Path(purelib) / "zz_unlearnd_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _run(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([python, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_installed_package_has_no_top_level_server_modules(fresh_venv: Path, tmp_path: Path):
    out = _run(fresh_venv, CHECKS.format(repo=str(ROOT), server=SERVER), tmp_path)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["top_level"] == dict.fromkeys(SERVER, False)  # `import api` & co. fail
    assert got["has_app"] and Path(got["app"]).is_relative_to(fresh_venv.parent.parent)
    assert not got["torch"]  # the API process never imports torch
    assert got["template"] and got["console"]
    assert got["migrations"] == sorted(p.name for p in (ROOT / "migrations" / "versions").glob("*.py"))
    cli = subprocess.run(
        [fresh_venv, "-m", "unlearnd.cli.main", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert cli.returncode == 0 and "unlearnd" in cli.stdout, cli.stderr


def test_installed_sdk_imports_neither_torch_nor_the_server(fresh_venv: Path, tmp_path: Path):
    out = _run(fresh_venv, SDK_ONLY.format(server=SERVER), tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_installed_server_is_found_beside_a_copy_of_the_sdk_folder(fresh_venv: Path, tmp_path: Path):
    """The Docker image's /app: its `unlearnd/` (the SDK sources) comes first on sys.path (cwd, uvicorn's app
    dir, alembic's prepend_sys_path) and must not hide the installed unlearnd.api (unlearnd/__init__.py)."""
    shutil.copytree(ROOT / "unlearnd", tmp_path / "unlearnd", ignore=shutil.ignore_patterns("__pycache__"))
    code = "import unlearnd, unlearnd.api.app; print(unlearnd.__file__); print(unlearnd.api.app.__file__)"
    out = _run(fresh_venv, code, tmp_path)
    assert out.returncode == 0, out.stderr
    sdk, app = out.stdout.split()
    assert Path(sdk).parent == tmp_path / "unlearnd" and Path(app).is_relative_to(fresh_venv.parent.parent)
