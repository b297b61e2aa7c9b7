"""Opaque cursors for keyset pagination: `{data, has_more, next}`; pass `next` back as `cursor`.

A cursor is base64 of a small JSON object that the client can read and rewrite, so decoding trusts nothing:
the object must have exactly the endpoint's keys, each of the declared kind and within what the column holds
(an int outside PostgreSQL's INTEGER or SQLite's 64 bits, a NUL byte in a string, would reach the driver and
fail there as a 500). Every other cursor is `422 invalid_cursor`, never echoed.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Literal

from unlearnd.api.errors import InvalidCursor

MAX_CURSOR_CHARS = 256
MAX_POSITION = 2**31 - 1  # the INTEGER columns cursors point into (seq, version, event id)
_ID = re.compile(r"[A-Za-z0-9_-]{1,40}")

Kind = Literal["int", "id"]


def encode_cursor(**position: Any) -> str:
    raw = json.dumps(position, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, **kinds: Kind) -> dict[str, Any] | None:
    """The position in `cursor`, whose keys and kinds are `kinds` (`int`: 0…2³¹−1, `id`: a resource id)."""
    if not cursor:
        return None
    if len(cursor) > MAX_CURSOR_CHARS:
        raise _invalid()
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = json.loads(raw)
    except (ValueError, RecursionError):  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise _invalid() from None
    if not isinstance(position, dict) or set(position) != set(kinds):
        raise _invalid()
    if not all(_valid(position[key], kind) for key, kind in kinds.items()):
        raise _invalid()
    return position


def _valid(value: Any, kind: Kind) -> bool:
    if kind == "int":
        return type(value) is int and 0 <= value <= MAX_POSITION  # not bool, not float
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def _invalid() -> InvalidCursor:
    return InvalidCursor("cursor is not one this API returned; start again without it")
