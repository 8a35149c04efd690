"""A job's owner proof: the desk PC's signature that this user sent this document (issue 13).

Why a signature from the desk and not a claim: a job's `requesting-user-name` is whatever the
client sends, so anyone on the org's LAN could print "as alice" and have her tap release it. The
org's desk PCs hold a desk signing key (Ed25519, made by `tenantprint org desk-key`, a root-only
file on each desk, never on the MFP nor in the cloud). The desk's CUPS backend (`org/desk_backend.py`)
signs every job it sends: which org, which user (the desk CUPS's own job owner, from the logged-in
account), which title, and the SHA-256 of the exact document bytes. The MFP checks the signature
with the public keys of the org's session profile (`print.desk_keys`). What a signature buys:

- a raw IPP client on the LAN cannot make a proof at all (no key);
- a proof read off the LAN (desk -> gateway is plain IPP) is bound to its document, user and title:
  relabelled to another user or put on another document it no longer verifies;
- the same proof twice (the same document again) is refused by the nonce record, and an old one by
  the window (`WINDOW_S` either side of the verifier's clock).

Ed25519 rather than an HMAC under a key the gateway hands out: the MFP (shared with other tenants)
only ever holds public keys, so nothing it keeps could forge a proof.

Wire form (ASCII, at most `MAX_LEN` characters), carried in the job attribute
`tenantprint-owner-proof` (text):

    v2.<nonce: 32 lowercase hex>.<issued: unix seconds, decimal>.<delivery: 32 lowercase hex>.<signature: 86 chars base64url, no padding>

Signed message: `DOMAIN` + org, user, title, nonce, issued, delivery joined by NUL + NUL + the
document's SHA-256 (32 raw bytes). NUL cannot occur in any of the fields (they are C strings in
CUPS; `sign` and `verify` refuse them), so the fields cannot be shifted into one another.

The delivery id names a job across its deliveries ("No job is lost", issue 14): it is the nonce of
the job's first delivery. A desk keeps a copy of every job it delivered until the MFP reports what
became of it by delivery id (released, deleted, expired: org/gateway_agent.py); a job whose session
ended without a word is delivered again, with a fresh nonce and issued time (the proof window and
the nonce record stay as they are) but the first delivery's id, so the MFP can tell a redelivery of
a job it already released. Only v2 is accepted.

Pure: no I/O; the clock and the nonce record are the caller's.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
import secrets
from collections.abc import Iterable, MutableSet
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ATTRIBUTE = "tenantprint-owner-proof"
VERSION = "v2"
DOMAIN = b"tenantprint-job-proof/v2\0"
WINDOW_S = 15 * 60
MAX_LEN = 200
_PROOF = re.compile(r"v2\.([0-9a-f]{32})\.([0-9]{1,12})\.([0-9a-f]{32})\.([A-Za-z0-9_-]{86})")
_NONCE = re.compile(r"[0-9a-f]{32}")
_MAX_FIELD = 1024  # org ids are 64, user names and titles 255 octets in IPP: room, but bounded


class ProofReason(enum.Enum):
    VALID = "valid"
    MALFORMED = "malformed"  # not a v2 proof (absent, too long, wrong shape)
    NO_KEYS = "no keys"  # the org registered no desk key: nothing can be proven
    # The signature does not verify under any of the org's keys. It binds org, user, title and
    # document, so a proof of another user, another org or another document ends here too: the
    # verifier cannot tell which of them differs, only that this job is not what was signed.
    BAD_SIGNATURE = "bad signature"
    EXPIRED = "expired"  # issued more than WINDOW_S before (or after) the verifier's clock
    REPLAYED = "replayed"  # a valid proof whose nonce was already used


@dataclass(frozen=True)
class ProofResult:
    reason: ProofReason
    nonce: str | None = None  # set once the proof parsed
    delivery: str | None = None  # the job's delivery id (its first delivery's nonce): set when valid

    @property
    def valid(self) -> bool:
        return self.reason is ProofReason.VALID


def document_digest(data: bytes) -> bytes:
    """SHA-256 of a whole document in memory (the backend hashes while it spools)."""
    import hashlib

    return hashlib.sha256(data).digest()


def _field(name: str, value: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected str")
    raw = value.encode("utf-8")
    if b"\0" in raw or len(raw) > _MAX_FIELD:
        raise ValueError(f"{name}: contains NUL or is longer than {_MAX_FIELD} bytes")
    return raw


def _id(name: str, value: object) -> bytes:
    if not isinstance(value, str) or not _NONCE.fullmatch(value):
        raise ValueError(f"{name}: expected 32 lowercase hex characters")
    return value.encode()


def signed_message(*, org: str, user: str, title: str, nonce: str, issued: int, delivery: str,
                   document_sha256: bytes) -> bytes:
    """Pure: the exact bytes that are signed (exposed for tests and other implementations)."""
    if not isinstance(document_sha256, (bytes, bytearray)) or len(document_sha256) != 32:
        raise ValueError("document_sha256: expected the 32-byte SHA-256 digest")
    fields = (_field("org", org), _field("user", user), _field("title", title), _id("nonce", nonce),
              str(int(issued)).encode(), _id("delivery", delivery))
    return DOMAIN + b"\0".join(fields) + b"\0" + bytes(document_sha256)


def sign(private_key: Ed25519PrivateKey, *, org: str, user: str, title: str, document_sha256: bytes,
         nonce: str | None = None, issued: int, delivery: str | None = None) -> str:
    """The proof string for one delivery of a job (`nonce`: 32 lowercase hex, fresh when None).
    `delivery`: the id of the job's first delivery when this is a redelivery; None for a first
    delivery, whose id is its own nonce."""
    nonce = secrets.token_hex(16) if nonce is None else nonce
    delivery = nonce if delivery is None else delivery
    if not 0 <= int(issued) < 10**12:
        raise ValueError("issued: out of range")
    sig = private_key.sign(signed_message(org=org, user=user, title=title, nonce=nonce, issued=issued,
                                          delivery=delivery, document_sha256=document_sha256))
    return (f"{VERSION}.{nonce}.{int(issued)}.{delivery}."
            f"{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}")


def parse(proof: object) -> tuple[str, int, str, bytes] | None:
    """Pure: (nonce, issued, delivery, signature) of a well-formed proof, else None. Looks at no
    more than `MAX_LEN` characters."""
    if not isinstance(proof, str) or len(proof) > MAX_LEN:
        return None
    m = _PROOF.fullmatch(proof)
    if m is None:
        return None
    try:
        sig = base64.urlsafe_b64decode(m.group(4) + "==")
    except (binascii.Error, ValueError):
        return None
    # 86 characters carry 516 bits: the last 4 must be zero, or two spellings would verify alike.
    if len(sig) != 64 or base64.urlsafe_b64encode(sig).rstrip(b"=").decode() != m.group(4):
        return None
    return m.group(1), int(m.group(2)), m.group(3), sig


def public_key(raw: bytes | Ed25519PublicKey) -> Ed25519PublicKey:
    return raw if isinstance(raw, Ed25519PublicKey) else Ed25519PublicKey.from_public_bytes(bytes(raw))


def verify(proof: object, public_keys: Iterable[bytes | Ed25519PublicKey], *, org: str, user: str, title: str,
           document_sha256: bytes, now: float, seen_nonces: MutableSet[str]) -> ProofResult:
    """Whether `proof` shows that `user` of `org` sent this document with this title (and, when
    valid, which delivery of which job it is: `ProofResult.delivery`).

    `public_keys`: the org's desk keys (raw 32 bytes, as `SessionProfile.print.desk_keys`, or
    loaded keys). `now`: the verifier's unix time. `seen_nonces`: the nonces of proofs already
    accepted; a valid proof's nonce is added to it (keep them for 2 x `WINDOW_S`: older proofs are
    refused as expired anyway). Checks, in order: shape, window, signature, replay; a job whose
    fields cannot have been signed (NUL inside, too long) is BAD_SIGNATURE. Never raises for any
    input the MFP receives from a client."""
    parsed = parse(proof)
    if parsed is None:
        return ProofResult(ProofReason.MALFORMED)
    nonce, issued, delivery, sig = parsed
    keys = list(public_keys)
    if not keys:
        return ProofResult(ProofReason.NO_KEYS, nonce)
    if abs(now - issued) > WINDOW_S:
        return ProofResult(ProofReason.EXPIRED, nonce)
    try:
        message = signed_message(org=org, user=user, title=title, nonce=nonce, issued=issued,
                                 delivery=delivery, document_sha256=document_sha256)
    except (TypeError, ValueError):
        return ProofResult(ProofReason.BAD_SIGNATURE, nonce)
    for key in keys:
        try:
            public_key(key).verify(sig, message)
            break
        except (InvalidSignature, ValueError):
            continue
    else:
        return ProofResult(ProofReason.BAD_SIGNATURE, nonce)
    if nonce in seen_nonces:
        return ProofResult(ProofReason.REPLAYED, nonce)
    seen_nonces.add(nonce)
    return ProofResult(ProofReason.VALID, nonce, delivery)
