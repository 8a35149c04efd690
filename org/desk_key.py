"""The org's desk signing key: the file each desk PC keeps, and its public half for the profile.

One Ed25519 key per org (or a few during a rotation: the profile lists up to 8 public keys), made
by `tenantprint org desk-key --org-id ORG --out FILE`, which prints the public key to put into the
org description's `desks.keys` (org/onboarding.py: it goes into the profile the cloud serves). The
private key lives only on the org's desk PCs, in a root-only file the desk's CUPS backend
(org/desk_backend.py, run as root by CUPS) reads per job; never on the MFP, never in the cloud.

File (JSON, mode 0600, in a directory only root can enter):

    {"org_id": "acme", "private_key": "<base64 of the raw 32-byte Ed25519 private key>"}
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

DEFAULT_PATH = "/etc/tenantprint/desk-key.json"
_ORG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_FILE = 4096


class DeskKeyError(ValueError):
    """The key file is missing, unreadable, too open or malformed (never shows the key)."""


@dataclass(frozen=True)
class DeskKey:
    org_id: str
    private_key: Ed25519PrivateKey = field(repr=False)

    @property
    def public_b64(self) -> str:
        """The public key as the profile carries it (base64 of the raw 32 bytes)."""
        raw = self.private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                         serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode()


def generate(org_id: str) -> DeskKey:
    if not _ORG.fullmatch(org_id):
        raise DeskKeyError("org_id: invalid")
    return DeskKey(org_id, Ed25519PrivateKey.generate())


def to_json(key: DeskKey) -> str:
    raw = key.private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                        serialization.NoEncryption())
    return json.dumps({"org_id": key.org_id, "private_key": base64.b64encode(raw).decode()})


def write(key: DeskKey, path: Path | str) -> Path:
    """Write the key file (0600; its directory created 0700). Refuses to overwrite a key."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(to_json(key))
    return path


def load(path: Path | str) -> DeskKey:
    """Read a key file; DeskKeyError when it is absent, readable by others, or malformed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise DeskKeyError(f"desk key {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if os.fstat(f.fileno()).st_mode & 0o077:
            raise DeskKeyError(f"desk key {path}: readable by others than its owner (chmod 600)")
        data = f.read(_MAX_FILE + 1)
    try:
        if len(data) > _MAX_FILE:
            raise ValueError
        obj = json.loads(data)
        if not isinstance(obj, dict) or set(obj) != {"org_id", "private_key"}:
            raise ValueError
        org_id, b64 = obj["org_id"], obj["private_key"]
        if not (isinstance(org_id, str) and _ORG.fullmatch(org_id) and isinstance(b64, str)):
            raise ValueError
        raw = base64.b64decode(b64, validate=True)
        if len(raw) != 32:
            raise ValueError
        return DeskKey(org_id, Ed25519PrivateKey.from_private_bytes(raw))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise DeskKeyError(f"desk key {path}: malformed") from None
