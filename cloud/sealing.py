"""A profile's sealed part, bound to its public part.

A stored profile is two halves (cloud/profiles.py): the public part in clear (`public_json`:
gateway, identities, traffic selectors, auth server address, policy) and the secrets sealed with
AES-256-GCM (cloud/crypto.py). The associated data of both the secrets and their wrapped data key
is `profile_aad`: the org id and the SHA-256 of the public part's canonical encoding (JSON, keys
sorted, no whitespace, ASCII). So a public part edited in the database (a gateway redirected, a
selector widened) makes the secrets fail to open: the lookup is refused and audited `tampered`,
never served. The public part that is hashed is the very object that is served (parsed once).

Rows sealed before this (`seal_version` 1, associated data: the org id only) are refused by
lookups (`LegacySeal`): an unbound public part is exactly what this closes, so nothing is served
from one. `tenantprint cloud reseal-profiles` re-seals them, binding the public part as it stands
at that moment: run it right after upgrading; an org whose stored public part is in doubt gets
`set-profile` from its own source instead.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from cloud.crypto import CryptoError, Keyring, Sealed

SEAL_LEGACY, SEAL_BOUND = 1, 2


class LegacySeal(CryptoError):
    """A profile sealed without its public part (seal_version 1): not served (503), audited."""

    def __init__(self, org_id: str):
        super().__init__(f"profile of org {org_id} is sealed without its public part: "
                         "run `tenantprint cloud reseal-profiles`")


def canonical_public(public: dict) -> bytes:
    return json.dumps(public, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def profile_aad(org_id: str, public: dict) -> bytes:
    return (b"tenantprint-profile-v2\0" + org_id.encode() + b"\0"
            + hashlib.sha256(canonical_public(public)).digest())


def legacy_aad(org_id: str) -> bytes:
    """The associated data of rows sealed before the public part was bound (org id only)."""
    return b"tenantprint-profile\0" + org_id.encode()


def row_aad(org_id: str, public_json: str, seal_version: int) -> bytes:
    """The associated data a stored row was sealed with (for re-wrapping under a new KEK)."""
    if seal_version == SEAL_LEGACY:
        return legacy_aad(org_id)
    return profile_aad(org_id, json.loads(public_json))


@dataclass(frozen=True)
class SealedProfile:
    public_json: str
    sealed: Sealed
    seal_version: int = SEAL_BOUND

    def columns(self) -> dict:
        """The `org_profile` columns this sealing sets."""
        return dict(public_json=self.public_json, kek_id=self.sealed.kek_id, wrapped_dek=self.sealed.wrapped_dek,
                    secrets_ct=self.sealed.ciphertext, seal_version=self.seal_version)


def seal_profile(keyring: Keyring, org_id: str, public: dict, secret: bytes) -> SealedProfile:
    """Seal `secret` bound to `org_id` and `public` (under the active KEK)."""
    return SealedProfile(json.dumps(public), keyring.seal(secret, profile_aad(org_id, public)))


def open_profile(keyring: Keyring, org_id: str, public_json: str, seal_version: int,
                 sealed: Sealed) -> tuple[dict, bytes]:
    """(public part, secrets) of a stored row; raises `LegacySeal`, or `DecryptError` (its subclass
    `Tampered` when the public part, the ciphertext or the org does not match)."""
    if seal_version != SEAL_BOUND:
        raise LegacySeal(org_id)
    public = json.loads(public_json)
    return public, keyring.open(sealed, profile_aad(org_id, public))
