"""Webhook secrets and signatures (Standard Webhooks v1): pure, read by the settings (a bad
secret refuses to start), the web tier and the deliverer.

webhook-id         the request id: the same on every attempt, so a receiver can drop repeats
webhook-timestamp  the attempt's time, integer seconds: a receiver refuses stale ones (replays)
webhook-signature  "v1,<base64 HMAC-SHA256 of '{id}.{timestamp}.{body}'>", one per secret,
                   space-separated: during a rotation the old and the new secret both sign
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

PREFIX = "whsec_"
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64  # the specification's bounds


def secret_keys(setting: str) -> list[bytes]:
    """The signing keys of `webhook_secret` (one or more `whsec_…`, space- or comma-separated).
    A malformed one is refused without repeating it (it is a secret, and logs are read widely)."""
    keys = []
    for n, text in enumerate(setting.replace(",", " ").split(), 1):
        try:
            if not text.startswith(PREFIX):
                raise ValueError
            key = base64.b64decode(text[len(PREFIX) :], validate=True)
        except (ValueError, binascii.Error):
            raise ValueError(
                f"webhook_secret #{n} is not whsec_ followed by base64 (see iraas webhook-secret)"
            ) from None
        if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
            raise ValueError(f"webhook_secret #{n} decodes to {len(key)} bytes: use {MIN_KEY_BYTES}-{MAX_KEY_BYTES}")
        keys.append(key)
    return keys


def new_secret() -> str:
    import secrets

    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(k, msg_id, timestamp, body) for k in keys),
        "content-type": "application/json",
    }


def verify(secret: str, msg_id: str, timestamp: str, body: bytes, signatures: str) -> bool:
    """What a receiver does (docs/integrating.md has it in ten lines without iraas)."""
    (key,) = secret_keys(secret)
    expected = signature(key, msg_id, int(timestamp), body)
    return any(hmac.compare_digest(expected, s) for s in signatures.split())
