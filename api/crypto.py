"""Encryption at rest of forget-request payloads (the personal data the caller asked to erase).

AES-256-GCM with a key derived by HKDF from the server secret; the ciphertext is bound to the request id
(associated data), so a payload copied onto another request does not decrypt.
"""

from __future__ import annotations

import json
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from unlearnd.api.settings import Settings

_VERSION = b"\x01"


def _key(settings: Settings) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"unlearnd payload v1")
    return hkdf.derive(settings.secret_key.get_secret_value().encode())


def encrypt_payload(settings: Settings, request_id: str, payload: dict) -> bytes:
    nonce = os.urandom(12)
    plain = json.dumps(payload, ensure_ascii=False).encode()
    return _VERSION + nonce + AESGCM(_key(settings)).encrypt(nonce, plain, request_id.encode())


def decrypt_payload(settings: Settings, request_id: str, blob: bytes) -> dict:
    if not blob.startswith(_VERSION):
        raise ValueError("unknown payload format")
    nonce, sealed = blob[1:13], blob[13:]
    return json.loads(AESGCM(_key(settings)).decrypt(nonce, sealed, request_id.encode()))
