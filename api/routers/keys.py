"""The audit public key: anyone may fetch it to verify certificates offline (it is public by design)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from unlearnd.api import certificates, schemas

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.get("/audit-public", response_model=schemas.PublicKeyOut)
def audit_public_key(request: Request) -> dict:
    """The Ed25519 public key of unlearning certificates (no API key needed). Save it once, from a channel
    you trust, and verify certificates with `unlearnd certificate verify FILE --public-key THIS_FILE`."""
    return certificates.public_key_document(request.app.state.signing_key.public_key())
