"""The unlearnd Python SDK: `from unlearnd import Client` (or `AsyncClient`).

Importing it needs only httpx and pydantic: neither torch nor the server stack (a test checks it).
"""

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
