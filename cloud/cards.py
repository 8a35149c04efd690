"""The space-level card directory's keyed hashes: cards known only by their UID, one org per space.

A card id (`card-<hex>`, `hal.directory.CARD_ID_RE`) is never stored: the `cards` table holds its
HMAC-SHA256 under the space's card key. Each space's card key is 32 random bytes made when the
space's first card is registered, sealed like a profile's secrets (a data key wrapped by the KEK,
the space id bound in as associated data), so `rotate-key` re-wraps it and every stored hash stays
valid. A key derived from the KEK itself would have made every registered card unfindable at the
first rotation: a keyed hash cannot be recomputed without the card id, which the directory does
not have. One key per space also means a card registered in two spaces has unrelated hashes.

Operators and audit records see only `card_ref`, the first 8 hex characters of a hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time

from sqlalchemy import Connection, insert, select

from cloud.crypto import Keyring, Sealed
from cloud.models import Card, CardKey
from hal.directory import CARD_ID_RE

T_CARD, T_CARD_KEY = Card.__table__, CardKey.__table__
CARD_REF_LEN = 8
_KEY_CACHE_SIZE = 10_000


def valid_card(card: object) -> bool:
    return isinstance(card, str) and CARD_ID_RE.fullmatch(card) is not None


def card_key_aad(space_id: str) -> bytes:
    return b"tenantprint-card-key\0" + space_id.encode()


def card_hash(key: bytes, card: str) -> str:
    """The stored form of a card id: hex HMAC-SHA256 under the space's card key."""
    return hmac.new(key, b"tenantprint-card\0" + card.encode(), hashlib.sha256).hexdigest()


def card_ref(hash_hex: str) -> str:
    """What operators and the audit log see of a card: its hash's first 8 hex characters."""
    return hash_hex[:CARD_REF_LEN]


class CardKeys:
    """The spaces' card keys, unsealed with the keyring and cached per process by sealed record
    (a re-wrapped record is a new entry: its unsealed key is the same)."""

    def __init__(self, keyring: Keyring):
        self.keyring = keyring
        self._cache: dict[tuple[str, str, bytes], bytes] = {}
        self._lock = threading.Lock()

    def open(self, space_id: str, kek_id: str, wrapped_dek: bytes, key_ct: bytes) -> bytes:
        """The space's card key from its sealed record (raises `DecryptError`)."""
        cache_key = (space_id, kek_id, bytes(wrapped_dek))
        with self._lock:
            key = self._cache.get(cache_key)
        if key is None:
            key = self.keyring.open(Sealed(kek_id, bytes(wrapped_dek), bytes(key_ct)), card_key_aad(space_id))
            with self._lock:
                if len(self._cache) >= _KEY_CACHE_SIZE:
                    self._cache.clear()
                self._cache[cache_key] = key
        return key

    def find(self, conn: Connection, space_id: str) -> bytes | None:
        """The space's card key, or None when no card was ever registered in the space."""
        row = conn.execute(select(T_CARD_KEY.c.kek_id, T_CARD_KEY.c.wrapped_dek, T_CARD_KEY.c.key_ct)
                           .where(T_CARD_KEY.c.space_id == space_id)).first()
        return None if row is None else self.open(space_id, row.kek_id, row.wrapped_dek, row.key_ct)

    def ensure(self, conn: Connection, space_id: str) -> bytes:
        """The space's card key, made and stored (in `conn`'s write transaction) if it has none."""
        key = self.find(conn, space_id)
        if key is None:
            key = secrets.token_bytes(32)
            sealed = self.keyring.seal(key, card_key_aad(space_id))
            conn.execute(insert(T_CARD_KEY).values(space_id=space_id, kek_id=sealed.kek_id,
                                                   wrapped_dek=sealed.wrapped_dek, key_ct=sealed.ciphertext,
                                                   created_at=time.time()))
        return key
