"""How a device signs its requests to the cloud directory (shared by the client and the cloud).

A request carries four headers:

    X-TP-Device     the device id given at enrolment
    X-TP-Timestamp  unix seconds (integer) when the request was signed
    X-TP-Nonce      32 lowercase hex characters, never reused by this device
    X-TP-Signature  base64 signature over `signed_message(...)`: Ed25519, or ECDSA P-256 with
                    SHA-256 (DER) for a device whose key is in a TPM 2.0 (a TPM has no Ed25519)

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

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

VERSION = "TP-SIG-1"
H_DEVICE, H_TIMESTAMP, H_NONCE, H_SIGNATURE = "X-TP-Device", "X-TP-Timestamp", "X-TP-Nonce", "X-TP-Signature"
NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def signed_message(method: str, path: str, body: bytes, timestamp: int, nonce: str, device_id: str) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((VERSION, method.upper(), path, digest, str(timestamp), nonce, device_id)).encode()


def sign_headers(key, device_id: str, method: str, path: str, body: bytes = b"",
                 *, now: float | None = None, nonce: str | None = None) -> dict[str, str]:
    """The four authentication headers for one request. `key`: an Ed25519 or P-256 private key, or
    a signer whose `sign(message)` answers a DER ECDSA-SHA256 signature (hal/tpm/signer.py)."""
    ts = int(time.time() if now is None else now)
    nonce = nonce or secrets.token_hex(16)
    message = signed_message(method, path, body, ts, nonce, device_id)
    sig = key.sign(message, ec.ECDSA(hashes.SHA256())) if isinstance(key, ec.EllipticCurvePrivateKey) \
        else key.sign(message)
    return {H_DEVICE: device_id, H_TIMESTAMP: str(ts), H_NONCE: nonce,
            H_SIGNATURE: base64.b64encode(sig).decode()}


def public_key_b64(key) -> str:
    """What the device enrols: Ed25519's 32 raw bytes, or P-256's 65-byte uncompressed point."""
    pub = key.public_key()
    if isinstance(pub, ec.EllipticCurvePublicKey):
        raw = pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    else:
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_public_key(raw: bytes) -> Ed25519PublicKey | ec.EllipticCurvePublicKey:
    """An enrolled public key: 32 bytes Ed25519, 65 bytes a P-256 point; else ValueError."""
    if len(raw) == 32:
        return Ed25519PublicKey.from_public_bytes(raw)
    if len(raw) == 65 and raw[0] == 4:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    raise ValueError("not an Ed25519 or P-256 public key")


def verify(public, signature: bytes, message: bytes) -> None:
    """Check `signature` over `message` with an enrolled key (`load_public_key`): InvalidSignature."""
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    else:
        public.verify(signature, message)
