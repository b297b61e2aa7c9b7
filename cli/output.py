"""Where the CLI writes for a person: a rich console that, when its output is piped or redirected, never
wraps a line (a piped line cut in the middle of an id or a hash is useless to grep) and draws no live
display."""

from __future__ import annotations

import os
import sys
import warnings

from rich.console import Console

PIPED_WIDTH = 400  # wide enough for any table row of ours: tables are laid out once, never wrapped


def console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=PIPED_WIDTH, soft_wrap=True, no_color=True, highlight=False)


def quiet_libraries() -> None:
    """No library progress bars or advisory warnings in a person's terminal: the demo prints its own
    progress. Set before transformers / huggingface_hub are imported (they read these at import)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def section(out: Console, title: str) -> None:
    """A section heading: a full-width rule on a terminal, a short one when piped (no 400-column rules)."""
    if out.is_terminal:
        out.rule(title)
    else:
        out.print(f"── {title} ──")
