"""Opaque cursors for keyset pagination: `{data, has_more, next}`; pass `next` back as `cursor`."""

from __future__ import annotations

import base64
import json
from typing import Any

from api.errors import InvalidCursor


def encode_cursor(**position: Any) -> str:
    raw = json.dumps(position, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, *keys: str) -> dict[str, Any] | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = json.loads(raw)
        if not isinstance(position, dict) or set(position) != set(keys):
            raise ValueError
        return position
    except ValueError:
        raise InvalidCursor("cursor is not one this API returned", details={"cursor": cursor}) from None
