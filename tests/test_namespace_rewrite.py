"""tools/namespace_rewrite.py: what it rewrites, what it leaves alone, and that a second run changes nothing."""

# namespace-rewrite: skip (the cases below are old-style code on purpose)

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "namespace_rewrite", Path(__file__).resolve().parent.parent / "tools" / "namespace_rewrite.py"
)
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

PATHS = tool.module_path_re(
    {"api": ["app", "settings"], "core": ["pipeline"], "worker": ["runner", "celery_app"], "cli": ["main"]}
)


def margin(text: str) -> str:
    """The cases' lines start with `|` (so that no line of this file starts like an old-style import)."""
    return re.sub(r"(?m)^[ \t]*\|", "", text)


def rewrite(code: str) -> str:
    once = tool.rewrite_python(margin(code), PATHS)
    assert tool.rewrite_python(once, PATHS) == once  # idempotent
    return once


def test_imports_and_the_names_plain_imports_bind():
    got = rewrite(
        '''
        |"""Docstring: core.pipeline.run_forget stays prose."""
        |import core.pipeline
        |import worker.celery_app as c
        |from api.settings import Settings
        |from api import app
        |from unlearnd import Client
        |from bench.common import x
        |
        |def phases():
        |    import worker.runner
        |    return [(core.pipeline, "run"), (worker.runner, "publish")]
        |
        |def other():
        |    async def worker():
        |        pass
        |    return worker()
        '''
    )
    assert "import unlearnd.core.pipeline\n" in got
    assert "import unlearnd.worker.celery_app as c\n" in got
    assert "from unlearnd.api.settings import Settings\n" in got and "from unlearnd.api import app\n" in got
    assert "from unlearnd import Client\n" in got and "from bench.common import x\n" in got
    assert '[(unlearnd.core.pipeline, "run"), (unlearnd.worker.runner, "publish")]' in got
    assert "return worker()" in got  # a local function named worker, not the package
    assert '"""Docstring: core.pipeline.run_forget stays prose."""' in got


def test_module_paths_in_strings_but_not_file_names_fstring_fields_or_docstrings():
    got = rewrite(
        """
        |def f(api, root):
        |    \"\"\"`worker.runner.run_job` in a docstring stays.\"\"\"
        |    cmd = [sys.executable, "-m", "cli.main", "worker"]
        |    target = "uvicorn api.app:app"
        |    code = "import api.app, sys; assert 'worker.runner' not in sys.modules"
        |    log = root / "worker.log"
        |    shown = f"{api.settings.data_dir} via cli.main"
        |    return cmd, target, code, log, shown, "unlearnd.api.app", "bench.speed"
        """
    )
    assert '"-m", "unlearnd.cli.main", "worker"' in got
    assert '"uvicorn unlearnd.api.app:app"' in got
    assert "\"import unlearnd.api.app, sys; assert 'unlearnd.worker.runner' not in sys.modules\"" in got
    assert '"worker.log"' in got
    assert 'f"{api.settings.data_dir} via unlearnd.cli.main"' in got  # the field is the argument `api`
    assert '"unlearnd.api.app", "bench.speed"' in got
    assert "`worker.runner.run_job` in a docstring stays." in got


def test_a_name_that_is_both_the_package_and_something_else_is_reported():
    with pytest.raises(tool.RewriteError, match="both"):
        rewrite(
            """
            |import core.pipeline
            |core = None
            |core.pipeline.run_forget()
            """
        )


def test_command_lines_in_deployment_and_docs():
    text = margin(
        """
        |CMD ["sh", "-c", "alembic upgrade head && exec uvicorn api.app:app --host 0.0.0.0"]
        |RUN python -c "import api.app, sys"
        |celery -A worker.celery_app worker -Q gpu
        |python -m cli.main demo
        |python -m bench.speed --quick
        |from core.config import UnlearnConfig
        |jobs import core (and torch) inside the worker thread; see `worker.runner.run_job`.
        """
    )
    got = tool.rewrite_text(text)
    assert tool.rewrite_text(got) == got
    assert "exec uvicorn unlearnd.api.app:app --host" in got and 'python -c "import unlearnd.api.app, sys"' in got
    assert "celery -A unlearnd.worker.celery_app worker" in got and "python -m unlearnd.cli.main demo" in got
    assert "python -m bench.speed --quick" in got and "from unlearnd.core.config import UnlearnConfig" in got
    assert "jobs import core (and torch) inside the worker thread; see `worker.runner.run_job`." in got
