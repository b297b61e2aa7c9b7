"""The unlearnd Python SDK: `from unlearnd import Client` (or `AsyncClient`).

Importing it needs only httpx and pydantic: neither torch nor the server stack (a test checks it).

The server is the rest of this package: `unlearnd.api`, `unlearnd.core`, `unlearnd.worker`, `unlearnd.cli` and
`unlearnd.migrations`, installed from the repository's top-level folders (pyproject.toml's package-dir; an
editable install maps them with setuptools' import finder).
"""

import os as _os
from pkgutil import extend_path as _extend_path

# A process started next to this SDK folder (a source checkout, or the Docker image's /app, whose cwd or
# app-dir comes first on sys.path) finds this folder before the installed package, which alone holds the
# server subpackages: search every `unlearnd` directory on sys.path (pkgutil's documented way to split a
# package across directories). Installed on its own, or editable, __path__ stays the one directory.
__path__ = list(dict.fromkeys(_os.path.abspath(p) for p in _extend_path(__path__, __name__)))

from unlearnd.client import AsyncClient, Client
from unlearnd.errors import ApiError
from unlearnd.records import read_jsonl
from unlearnd.types import Adapter, AdapterRef, Audit, ChainCheck, Event, ForgetRequest, Job, Model, Progress

__all__ = [
    "Adapter",
    "AdapterRef",
    "ApiError",
    "AsyncClient",
    "Audit",
    "ChainCheck",
    "Client",
    "Event",
    "ForgetRequest",
    "Job",
    "Model",
    "Progress",
    "read_jsonl",
]
