"""How a device signs its requests to the cloud directory (shared by the client and the cloud).

A request carries four headers:

    X-TP-Device     the device id given at enrolment
    X-TP-Timestamp  unix seconds (integer) when the request was signed
    X-TP-Nonce      32 lowercase hex characters, never reused by this device
    X-TP-Signature  base64 Ed25519 signature over `signed_message(...)`

The signed message binds the method, the path (with query), the SHA-256 of the body, the
timestamp, the nonce and the device id, one per line after a version tag. Nothing here depends on
the transport, so signed requests pass load balancers and TLS terminators unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

VERSION = "TP-SIG-1"
H_DEVICE, H_TIMESTAMP, H_NONCE, H_SIGNATURE = "X-TP-Device", "X-TP-Timestamp", "X-TP-Nonce", "X-TP-Signature"
NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def signed_message(method: str, path: str, body: bytes, timestamp: int, nonce: str, device_id: str) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((VERSION, method.upper(), path, digest, str(timestamp), nonce, device_id)).encode()


def sign_headers(key: Ed25519PrivateKey, device_id: str, method: str, path: str, body: bytes = b"",
                 *, now: float | None = None, nonce: str | None = None) -> dict[str, str]:
    """The four authentication headers for one request."""
    ts = int(time.time() if now is None else now)
    nonce = nonce or secrets.token_hex(16)
    sig = key.sign(signed_message(method, path, body, ts, nonce, device_id))
    return {H_DEVICE: device_id, H_TIMESTAMP: str(ts), H_NONCE: nonce,
            H_SIGNATURE: base64.b64encode(sig).decode()}


def public_key_b64(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_public_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)
