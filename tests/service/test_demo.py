"""`unlearnd demo` as a newcomer runs it, piped (issue 15, item 7): no library progress bars or warnings, the
meaning of MA, EL10 and the MIA AUC, the target of the live checks, a reading of the table, and every path
it prints still there after it exits (the adapter when one was published, the plot, the report)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_the_demo_explains_itself_and_keeps_what_it_names(tiny_world, tmp_path: Path):
    worlds = tmp_path / "worlds"
    worlds.mkdir()
    (worlds / "quick").symlink_to(Path(tiny_world.model_dir).parent)  # the suite's cached tiny world
    out = tmp_path / "demo-output"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNLEARND_", "TRANSFORMERS_", "HF_", "TQDM_"))}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "unlearnd.cli.main",
            "demo",
            "--quick",
            "--max-steps",
            "8",
            "--world-dir",
            str(worlds),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**env, "PYTHONWARNINGS": "default"},
        timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )
    text = run.stdout + run.stderr
    assert run.returncode in (0, 1), text
    for noise in ("Warning", "it/s", "%|", "Loading"):
        assert noise not in text, f"{noise!r} in the demo's output:\n{text}"
    for term in ("MA: memorisation accuracy", "EL10: extraction likelihood", "MIA AUC: membership-inference AUC"):
        assert term in text
    assert "→ target 0.5±0.1" in text  # the live checks show what they are heading for
    assert re.search(r"^(The records are forgotten|Forgetting was not reached|.+)\. Before unlearning", text, re.M)
    assert max(len(line) for line in text.splitlines()) < 1000 and "─" * 200 not in text  # no 400-column rules
    results = text.split("6. results (kept after the demo)")[1]
    paths = [Path(p) for p in re.findall(r": (/\S+)$", results, flags=re.M)]
    assert len(paths) >= 2 and all(p.exists() for p in paths), results
    assert (out / "unlearning-curve.png").read_bytes()[:4] == b"\x89PNG"
    assert any(p.name.startswith("evidence-aud_") for p in paths)
    published = "no new version" not in text
    assert (out / "adapter" / "adapter_config.json").is_file() == published
    if published:
        assert f"→ {out / 'adapter'}" in text
