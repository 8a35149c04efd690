"""Envelope encryption of profile secrets (AES-256-GCM, `cryptography`).

Each record gets a fresh 256-bit data key (DEK) that encrypts its secrets; the DEK is stored
wrapped (encrypted) by a key-encryption key (KEK) whose id is stored beside it. KEKs come from a
file (`--kek-file` / `TP_CLOUD_KEK_FILE`): one base64 key per line, the first is the active one
(used for new records), the others are retired keys still accepted for reading while a rotation
runs. The file must not be readable by group or others. Each record's associated data (a profile:
its org id and public part, cloud/sealing.py; a card key: its space id) is bound into both
ciphertexts, so a ciphertext moved to another record, or a record whose clear part was edited,
does not decrypt.

Errors name key ids and org ids, never key material or plaintext.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE = 12


class CryptoError(Exception):
    """Base of the KEK errors (KEK or record errors)."""


class KekFileError(CryptoError):
    """The KEK file is missing, malformed or too widely readable."""


class DecryptError(CryptoError):
    """A record does not decrypt: unknown KEK id, or tampered/moved ciphertext."""


class Tampered(DecryptError):
    """A record's authentication failed: its ciphertext, wrapped key or associated data (org, a
    profile's public part) is not what was sealed."""


def kek_id(kek: bytes) -> str:
    return hashlib.sha256(b"tenantprint-kek-id\0" + kek).hexdigest()[:16]


def new_kek() -> bytes:
    return secrets.token_bytes(32)


def write_kek_file(path: Path, keys: list[bytes]) -> None:
    """Write `keys` (active first) atomically with mode 0600."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(base64.b64encode(k).decode() + "\n" for k in keys))
    os.replace(tmp, path)


def read_kek_file(path: Path) -> list[bytes]:
    path = Path(path)
    try:
        st = path.stat()
        raw = path.read_text()
    except OSError as exc:
        raise KekFileError(f"KEK file {path}: {exc.strerror or exc}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KekFileError(f"KEK file {path}: readable by group/others (chmod 600)")
    keys = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            key = base64.b64decode(line.strip(), validate=True)
        except ValueError:
            raise KekFileError(f"KEK file {path}: line {n} is not base64") from None
        if len(key) != 32:
            raise KekFileError(f"KEK file {path}: line {n} is not a 256-bit key")
        keys.append(key)
    if not keys:
        raise KekFileError(f"KEK file {path}: no key")
    return keys


@dataclass
class Sealed:
    kek_id: str
    wrapped_dek: bytes
    ciphertext: bytes


class Keyring:
    """The KEKs from one file; re-read when a record names a KEK id it does not know yet (another
    process rotated the keys)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        keys = read_kek_file(self.path)
        self._keys = {kek_id(k): k for k in keys}
        self.active_id = kek_id(keys[0])

    def _kek(self, kid: str) -> bytes:
        with self._lock:
            if kid not in self._keys:
                try:
                    self._load()
                except KekFileError:
                    pass
            key = self._keys.get(kid)
        if key is None:
            raise DecryptError(f"no KEK with id {kid} in {self.path}")
        return key

    def seal(self, plaintext: bytes, aad: bytes) -> Sealed:
        dek = AESGCM.generate_key(bit_length=256)
        n1, n2 = os.urandom(_NONCE), os.urandom(_NONCE)
        ct = n1 + AESGCM(dek).encrypt(n1, plaintext, aad)
        kid = self.active_id
        wrapped = n2 + AESGCM(self._kek(kid)).encrypt(n2, dek, b"dek\0" + aad)
        return Sealed(kid, wrapped, ct)

    def _dek(self, kid: str, wrapped: bytes, aad: bytes) -> bytes:
        try:
            return AESGCM(self._kek(kid)).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], b"dek\0" + aad)
        except InvalidTag:
            raise Tampered(f"data key under KEK {kid} does not unwrap (tampered or moved)") from None

    def open(self, sealed: Sealed, aad: bytes) -> bytes:
        dek = self._dek(sealed.kek_id, sealed.wrapped_dek, aad)
        ct = sealed.ciphertext
        try:
            return AESGCM(dek).decrypt(ct[:_NONCE], ct[_NONCE:], aad)
        except InvalidTag:
            raise Tampered("ciphertext does not decrypt (tampered or moved)") from None

    def rewrap(self, sealed: Sealed, aad: bytes, to_kid: str) -> Sealed:
        """The same ciphertext with its data key wrapped by KEK `to_kid`."""
        dek = self._dek(sealed.kek_id, sealed.wrapped_dek, aad)
        n = os.urandom(_NONCE)
        wrapped = n + AESGCM(self._kek(to_kid)).encrypt(n, dek, b"dek\0" + aad)
        return Sealed(to_kid, wrapped, sealed.ciphertext)

    def reload(self) -> None:
        with self._lock:
            self._load()
