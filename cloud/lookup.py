"""What devices may do: enrol once with a token, then look up org profiles with signed requests.

Every refusal a device can see is one of two fixed answers: `Unauthenticated` (who are you?) and
`Refused` (no). An unknown org, an org without an active contract with the device's space, and an
org without a profile are the same `Refused`, so a device cannot probe which orgs exist. Every
lookup and enrolment, granted or not, is an audit event.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import random
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from sqlalchemy import Engine, delete, insert, select, update

from cloud import profiles
from cloud.crypto import Keyring, Sealed
from cloud.models import ACTIVE, AuditEvent, Contract, Device, EnrolmentToken, OrgProfile, RequestNonce
from cloud.storage import read_txn, write_txn
from hal.directory.profile import _ID
from hal.directory.signing import (DEVICE_ID_RE, H_DEVICE, H_NONCE, H_SIGNATURE, H_TIMESTAMP, NONCE_RE,
                                   load_public_key, signed_message)

T_DEVICE, T_CONTRACT, T_PROFILE = Device.__table__, Contract.__table__, OrgProfile.__table__
T_AUDIT, T_NONCE, T_TOKEN = AuditEvent.__table__, RequestNonce.__table__, EnrolmentToken.__table__


class Unauthenticated(Exception):
    """The request does not prove a live, enrolled device. `reason` is for the audit log only."""

    def __init__(self, reason: str, device_id: str | None = None):
        super().__init__("unauthenticated")
        self.reason, self.device_id = reason, device_id


class Refused(Exception):
    """The one answer to every lookup or enrolment that is not granted."""

    def __init__(self, reason: str):
        super().__init__("refused")
        self.reason = reason


@dataclass(frozen=True)
class Enrolled:
    device_id: str
    space_id: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def audit(conn, action: str, outcome: str, device_id: str | None = None, org_id: str | None = None,
          at: float | None = None) -> None:
    conn.execute(insert(T_AUDIT).values(at=time.time() if at is None else at, device_id=device_id,
                                        org_id=org_id, action=action, outcome=outcome))


def _safe_id(value: str | None) -> str | None:
    """An id from a request, fit for the audit log (malformed ids are not stored)."""
    return value if value and _ID.match(value) else None


class DeviceDirectory:
    def __init__(self, engine: Engine, keyring: Keyring, *, window_s: int = 60):
        self.engine, self.keyring, self.window_s = engine, keyring, window_s

    # -- enrolment -------------------------------------------------------------------------

    def enrol(self, token: str, public_key_b64: str) -> Enrolled:
        try:
            raw = base64.b64decode(public_key_b64, validate=True)
            load_public_key(raw)
        except (ValueError, binascii.Error):
            raise Refused("bad-public-key") from None
        now = time.time()
        with write_txn(self.engine) as conn:
            row = conn.execute(
                update(T_TOKEN)
                .where(T_TOKEN.c.token_hash == token_hash(token), T_TOKEN.c.used_at.is_(None),
                       T_TOKEN.c.expires_at > now)
                .values(used_at=now)
                .returning(T_TOKEN.c.space_id, T_TOKEN.c.device_id)
            ).first()
            if row is None:
                audit(conn, "enrol", "refused", at=now)
                outcome = None
            else:
                existing = conn.execute(select(T_DEVICE.c.id).where(T_DEVICE.c.id == row.device_id)).first()
                if existing is not None:
                    audit(conn, "enrol", "refused-duplicate", device_id=row.device_id, at=now)
                    outcome = None
                else:
                    conn.execute(insert(T_DEVICE).values(id=row.device_id, space_id=row.space_id, public_key=raw,
                                                         status=ACTIVE, enrolled_at=now))
                    audit(conn, "enrol", "granted", device_id=row.device_id, at=now)
                    outcome = Enrolled(row.device_id, row.space_id)
        if outcome is None:
            raise Refused("token")
        return outcome

    # -- request authentication -----------------------------------------------------------

    def authenticate(self, headers, method: str, path: str, body: bytes) -> tuple[str, str, int]:
        """Check the signature headers; returns (device_id, nonce, timestamp). The nonce is
        consumed by `lookup` in the same transaction as the answer."""
        device_id, ts_s, nonce, sig_b64 = (headers.get(h) for h in (H_DEVICE, H_TIMESTAMP, H_NONCE, H_SIGNATURE))
        if not (device_id and ts_s and nonce and sig_b64):
            raise Unauthenticated("missing-headers")
        if not DEVICE_ID_RE.match(device_id) or not NONCE_RE.match(nonce) or not ts_s.isdigit() or len(ts_s) > 12:
            raise Unauthenticated("malformed-headers", _safe_id(device_id))
        ts = int(ts_s)
        if abs(time.time() - ts) > self.window_s:
            raise Unauthenticated("stale", device_id)
        try:
            sig = base64.b64decode(sig_b64, validate=True)
        except (ValueError, binascii.Error):
            raise Unauthenticated("malformed-signature", device_id) from None
        with read_txn(self.engine) as conn:
            dev = conn.execute(select(T_DEVICE.c.public_key, T_DEVICE.c.status)
                               .where(T_DEVICE.c.id == device_id)).first()
        if dev is None:
            raise Unauthenticated("unknown-device", device_id)
        if dev.status != ACTIVE:
            raise Unauthenticated("revoked", device_id)
        try:
            load_public_key(dev.public_key).verify(sig, signed_message(method, path, body, ts, nonce, device_id))
        except InvalidSignature:
            raise Unauthenticated("bad-signature", device_id) from None
        return device_id, nonce, ts

    def record_refusal(self, action: str, exc: Exception, device_id: str | None = None, org_id: str | None = None) -> None:
        reason = getattr(exc, "reason", "refused")
        dev = getattr(exc, "device_id", None) or device_id
        with write_txn(self.engine) as conn:
            audit(conn, action, reason[:32], device_id=_safe_id(dev), org_id=_safe_id(org_id))

    # -- lookup ----------------------------------------------------------------------------

    def purge_nonces(self, conn, now: float) -> int:
        """Forget nonces older than any timestamp the window still accepts (they cannot replay)."""
        return conn.execute(delete(T_NONCE).where(T_NONCE.c.seen_at < now - 2 * self.window_s - 5)).rowcount

    def lookup(self, device_id: str, nonce: str, org_id: str) -> dict:
        """The org's wire profile for this device, or `Refused`/`Unauthenticated` (replay)."""
        now = time.time()
        org = _safe_id(org_id)
        with write_txn(self.engine) as conn:
            replay = conn.execute(_insert_nonce(conn.dialect.name).values(
                device_id=device_id, nonce=nonce, seen_at=now).returning(T_NONCE.c.nonce)).first() is None
            if replay:
                audit(conn, "lookup", "replay", device_id=device_id, org_id=org, at=now)
            if not replay:
                if random.random() < 1 / 256:
                    self.purge_nonces(conn, now)
                row = None
                if org is not None:
                    row = conn.execute(
                        select(T_PROFILE.c.public_json, T_PROFILE.c.kek_id, T_PROFILE.c.wrapped_dek,
                               T_PROFILE.c.secrets_ct)
                        .select_from(T_DEVICE.join(T_CONTRACT, T_CONTRACT.c.space_id == T_DEVICE.c.space_id)
                                     .join(T_PROFILE, T_PROFILE.c.org_id == T_CONTRACT.c.org_id))
                        .where(T_DEVICE.c.id == device_id, T_DEVICE.c.status == ACTIVE,
                               T_CONTRACT.c.org_id == org, T_CONTRACT.c.status == ACTIVE)
                        .limit(1)
                    ).first()
                audit(conn, "lookup", "granted" if row is not None else "refused",
                      device_id=device_id, org_id=org, at=now)
        if replay:
            raise Unauthenticated("replay", device_id)
        if row is None:
            raise Refused("no-contract")
        secret = self.keyring.open(Sealed(row.kek_id, row.wrapped_dek, row.secrets_ct), aad(org))
        return profiles.join(json.loads(row.public_json), secret)


def _insert_nonce(dialect: str):
    # INSERT ... ON CONFLICT DO NOTHING: a nonce already seen inserts no row (a replay), without
    # a savepoint round trip; the primary key makes this atomic across API processes.
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    return dialect_insert(T_NONCE).on_conflict_do_nothing(index_elements=["device_id", "nonce"])


def aad(org_id: str) -> bytes:
    return b"tenantprint-profile\0" + org_id.encode()
