"""What devices may do: enrol once with a token, then look up org profiles (and the org of a card
known only by its UID) with signed requests.

Every refusal a device can see is one of two fixed answers: `Unauthenticated` (who are you?) and
`Refused` (no). An unknown org, an org without an active contract with the device's space, and an
org without a profile are the same `Refused`, so a device cannot probe which orgs exist. Likewise
a card not registered in the device's space and a card whose org has no active contract with it.
Every decision about a request whose signature verified (or an enrolment with a real token) is an
audit event (never with a card id: a card appears as its `card_ref`, see `cloud/cards.py`). A
request whose signature did not verify, or an enrolment with an unknown token, is only counted
(cloud/refusals.py): its ids are whatever the sender wrote, so it is never attributed to a device.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import random
import time
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from sqlalchemy import Engine, and_, bindparam, delete, insert, select, update

from cloud import profiles
from cloud.anomalies import SourceWatch, exact_source
from cloud.audit_log import T_AUDIT, audit
from cloud.cards import T_CARD, T_CARD_KEY, CardKeys, card_hash, card_ref
from cloud.crypto import DecryptError, Keyring, Sealed, Tampered
from cloud.lookup_pg import LookupRow, run_lookup
from cloud.models import ACTIVE, Contract, Device, EnrolmentToken, OrgProfile, RequestNonce
from cloud.prepared import Prepared
from cloud.ratelimit import DeviceThrottle, TokenBuckets
from cloud.refusals import RefusalCounter
from cloud.sealing import LegacySeal, open_profile
from cloud.sessions import OPEN_MAX_S, open_session
from cloud.storage import read_txn, upsert, write_txn
from hal.directory.profile import _ID
from hal.directory.signing import (DEVICE_ID_RE, H_DEVICE, H_NONCE, H_SIGNATURE, H_TIMESTAMP, NONCE_RE,
                                   load_public_key, signed_message, verify)

T_DEVICE, T_CONTRACT, T_PROFILE = Device.__table__, Contract.__table__, OrgProfile.__table__
T_NONCE, T_TOKEN = RequestNonce.__table__, EnrolmentToken.__table__
KEY_CACHE_SIZE = 100_000  # raw 32-byte public keys of enrolled devices, per process
VERIFIED_OUTCOMES = ("granted", "refused", "unknown-card", "no-contract")  # the device passed every check


class Unauthenticated(Exception):
    """The request does not prove a live, enrolled device. `reason` is for the audit log or the
    refusal counters only. `device_id` is set only when the request's signature verified with that
    device's key (a stale or replayed copy of its request, a revoked device): only then may the
    refusal name a device."""

    def __init__(self, reason: str, device_id: str | None = None):
        super().__init__("unauthenticated")
        self.reason, self.device_id = reason, device_id
        self.audited = False  # set once the refusal's audit record is committed


class Refused(Exception):
    """The one answer to every lookup or enrolment that is not granted."""

    def __init__(self, reason: str):
        super().__init__("refused")
        self.reason = reason
        self.audited = False


@dataclass(frozen=True)
class Enrolled:
    device_id: str
    space_id: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _safe_id(value: str | None) -> str | None:
    """An id from a request, fit for the audit log (malformed ids are not stored)."""
    return value if value and _ID.match(value) else None


class DeviceDirectory:
    """`device_limit`: the per-device token buckets (cloud/ratelimit.py), None for no limit."""

    def __init__(self, engine: Engine, keyring: Keyring, *, window_s: int = 60,
                 device_limit: TokenBuckets | None = None):
        self.engine, self.keyring, self.window_s = engine, keyring, window_s
        self._keys: dict[str, bytes] = {}
        self.card_keys = CardKeys(keyring)
        self.refusals = RefusalCounter(engine)
        self.sources = SourceWatch(engine)
        self._throttle = DeviceThrottle(engine, device_limit, self.count_refusal)

    # -- refusals that prove nothing, and rate limits ----------------------------------------

    def count_refusal(self, action: str, reason: str, host: str | None) -> None:
        """Count a refusal of a request that proved no device (cloud/refusals.py); in a worker thread."""
        if self.refusals.note(action, reason, host):
            self.refusals.flush()

    def throttle(self, device_id: str, action: str, host: str | None) -> None:
        """Spend a token of `device_id` (whose request's signature verified), or `RateLimited`."""
        self._throttle.take(device_id, action, host)

    # -- enrolment -------------------------------------------------------------------------

    def enrol(self, token: str, public_key_b64: str, host: str | None = None) -> Enrolled:
        """Enrol with a one-time token. An unknown token (or a bad key) is counted, not audited;
        a real token used again or expired is audited, naming the device it was issued for."""
        try:
            raw = base64.b64decode(public_key_b64, validate=True)
            load_public_key(raw)
        except (ValueError, binascii.Error):
            self.count_refusal("enrol", "bad-public-key", host)
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
                issued = conn.execute(select(T_TOKEN.c.device_id)
                                      .where(T_TOKEN.c.token_hash == token_hash(token))).scalar()
                if issued is not None:
                    audit(conn, "enrol", "refused", device_id=issued, at=now)
                outcome = None if issued is not None else "unknown-token"
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
        if outcome == "unknown-token":
            self.count_refusal("enrol", "unknown-token", host)
            raise Refused("unknown-token")
        if outcome is None:
            raise Refused("token")  # used, expired, or its device enrolled already: audited
        return outcome

    # -- request authentication -----------------------------------------------------------

    def public_key(self, device_id: str) -> bytes | None:
        """The device's raw public key, from this process's cache or the database. Keys of enrolled
        devices never change (an id enrols once); `lookup` still compares the key it verified with
        against the database row in its transaction, so the cache only saves a round trip."""
        raw = self._keys.get(device_id)
        if raw is None:
            with read_txn(self.engine) as conn:
                raw = conn.execute(select(T_DEVICE.c.public_key).where(T_DEVICE.c.id == device_id)).scalar()
            if raw is None:
                return None
            if len(self._keys) >= KEY_CACHE_SIZE:
                self._keys.clear()
            self._keys[device_id] = raw = bytes(raw)
        return raw

    def authenticate(self, headers, method: str, path: str, body: bytes) -> tuple[str, str, bytes]:
        """Check the signature headers; returns (device_id, nonce, public key it verified with).
        `lookup` consumes the nonce and re-checks the device (status, key) in the transaction of
        the answer. The timestamp's window is checked after the signature, so a stale request
        names its device only when the device signed it."""
        device_id, ts_s, nonce, sig_b64 = (headers.get(h) for h in (H_DEVICE, H_TIMESTAMP, H_NONCE, H_SIGNATURE))
        if not (device_id and ts_s and nonce and sig_b64):
            raise Unauthenticated("missing-headers")
        if not DEVICE_ID_RE.match(device_id) or not NONCE_RE.match(nonce) or not ts_s.isdigit() or len(ts_s) > 12:
            raise Unauthenticated("malformed-headers")
        ts = int(ts_s)
        try:
            sig = base64.b64decode(sig_b64, validate=True)
        except (ValueError, binascii.Error):
            raise Unauthenticated("malformed-signature") from None
        raw = self.public_key(device_id)
        if raw is None:
            raise Unauthenticated("unknown-device")
        try:
            verify(load_public_key(raw), sig, signed_message(method, path, body, ts, nonce, device_id))
        except InvalidSignature:
            raise Unauthenticated("bad-signature") from None
        if abs(time.time() - ts) > self.window_s:
            raise Unauthenticated("stale", device_id)
        return device_id, nonce, raw

    def record_refusal(self, action: str, exc: Exception, host: str | None, device_id: str | None = None,
                       org_id: str | None = None) -> None:
        """Record a refusal not yet recorded: an audit event when a verified device is named (by
        `exc` or `device_id`), else a count."""
        if getattr(exc, "audited", False):
            return
        reason = getattr(exc, "reason", "refused")
        dev = getattr(exc, "device_id", None) or device_id
        if dev is None:
            self.count_refusal(action, reason, host)
            return
        with write_txn(self.engine) as conn:
            audit(conn, action, reason[:32], device_id=dev, org_id=_safe_id(org_id))

    # -- lookup ----------------------------------------------------------------------------

    def purge_nonces(self, conn, now: float) -> int:
        """Forget nonces older than any timestamp the window still accepts (they cannot replay)."""
        return conn.execute(delete(T_NONCE).where(T_NONCE.c.seen_at < now - 2 * self.window_s - 5)).rowcount

    def _maybe_purge(self, now: float) -> None:
        if random.random() < 1 / 256:
            with write_txn(self.engine) as conn:
                self.purge_nonces(conn, now)

    def lookup(self, device_id: str, nonce: str, org_id: str, public_key: bytes | None = None,
               host: str | None = None) -> dict:
        """The org's wire profile for this device, or `Refused`/`Unauthenticated` (revoked device,
        replay, or a device whose key is not `public_key`, the key the request was verified with).

        One write transaction: the device and profile read, the nonce insert and the audit record
        commit together, so a granted answer always has its audit record and its spent nonce. A
        granted profile whose sealed part does not open (its public part or ciphertext edited,
        or sealed before the public part was bound) is not served: a second audit event says
        why (`tampered`, `legacy-seal`, `undecryptable`) and the `CryptoError` goes up (503).
        A verified request from a new source address is an anomaly (cloud/anomalies.py); a granted
        one for an org whose session the device holds open already is one too (cloud/sessions.py)."""
        now = time.time()
        org = _safe_id(org_id)
        source = exact_source(host)
        if self.engine.dialect.name == "postgresql":
            row = run_lookup(self.engine, device_id=device_id, nonce=nonce, org_id=org, public_key=public_key,
                             now=now, source=source, open_max_s=OPEN_MAX_S)
        else:
            row = self._lookup_local(device_id, nonce, org, public_key, now, source)
        self._maybe_purge(now)
        if host is not None and row.outcome in VERIFIED_OUTCOMES:
            self.sources.seen(device_id, host, org)
        if row.outcome == "replay":
            self._throttle.give_back(device_id, host)
        if row.outcome != "granted":
            if row.outcome in ("unknown-device", "key-changed"):
                self._keys.pop(device_id, None)
            denied = Refused("no-contract") if row.outcome == "refused" else Unauthenticated(row.outcome, device_id)
            denied.audited = True
            raise denied
        try:
            public, secret = open_profile(self.keyring, org, row.public_json, row.seal_version,
                                          Sealed(row.kek_id, row.wrapped_dek, row.secrets_ct))
        except (LegacySeal, DecryptError) as exc:
            why = "legacy-seal" if isinstance(exc, LegacySeal) else "tampered" if isinstance(exc, Tampered) \
                else "undecryptable"
            with write_txn(self.engine) as conn:
                audit(conn, "lookup", why, device_id=device_id, org_id=org)
            raise
        return profiles.join(public, secret)

    def _lookup_local(self, device_id: str, nonce: str, org: str | None, public_key: bytes | None,
                      now: float, source: str = "unknown") -> LookupRow:
        """The lookup as one local transaction (SQLite); `lookup_pg` is the same in one statement.
        A granted lookup opens the device's session with the org (cloud/sessions.py)."""
        with write_txn(self.engine) as conn:
            dev = DEVICE_AND_PROFILE.first(conn, device_id=device_id, org_id=org or "")
            dev = None if dev is None else _DeviceRow(*dev)
            outcome = _device_refused(conn, dev, device_id, nonce, public_key, now)
            if outcome is None:
                outcome = "granted" if dev.secrets_ct is not None else "refused"
            INSERT_AUDIT.run(conn, at=now, device_id=device_id, org_id=org, action="lookup", outcome=outcome).close()
            if outcome == "granted":
                open_session(conn, device_id, org, source, now)
        if outcome != "granted":
            return LookupRow(outcome, None, None, None, None, None)
        return LookupRow(outcome, dev.public_json, dev.kek_id, dev.wrapped_dek, dev.secrets_ct, dev.seal_version)

    # -- cards known by their UID only -----------------------------------------------------

    def card_org(self, device_id: str, nonce: str, card: str, public_key: bytes | None = None,
                 host: str | None = None) -> str:
        """The org `card` (a valid card id) is registered to in the device's space while that org
        has an active contract with the space; else `Refused` (the same for an unknown card and an
        org without a contract) or `Unauthenticated` (as `lookup`).

        One write transaction: the device check, the spent nonce, the card read and the audit
        record (outcome, device, the org when the card is known, the card's `card_ref`) commit
        together."""
        now = time.time()
        org = ref = None
        with write_txn(self.engine) as conn:
            dev = conn.execute(DEVICE_AND_CARD_KEY, {"device_id": device_id}).first()
            outcome = _device_refused(conn, dev, device_id, nonce, public_key, now)
            if outcome is None and dev.kek_id is None:  # no card was ever registered in this space
                outcome = "unknown-card"
            elif outcome is None:
                hashed = card_hash(self.card_keys.open(dev.space_id, dev.kek_id, dev.wrapped_dek, dev.key_ct), card)
                ref = card_ref(hashed)
                found = conn.execute(CARD_AND_CONTRACT, {"space_id": dev.space_id, "card_hash": hashed}).first()
                if found is None:
                    outcome = "unknown-card"
                else:
                    org = found.org_id
                    outcome = "granted" if found.contract_id is not None else "no-contract"
            audit(conn, "card-lookup", outcome, device_id=device_id, org_id=org, at=now, card_ref=ref)
        self._maybe_purge(now)
        if host is not None and outcome in VERIFIED_OUTCOMES:
            self.sources.seen(device_id, host, org)
        if outcome == "replay":
            self._throttle.give_back(device_id, host)
        if outcome == "granted":
            return org
        if outcome in ("unknown-device", "key-changed"):
            self._keys.pop(device_id, None)
        denied = Refused(outcome) if outcome in ("unknown-card", "no-contract") else Unauthenticated(outcome, device_id)
        denied.audited = True
        raise denied


def _device_refused(conn, dev, device_id: str, nonce: str, public_key: bytes | None, now: float) -> str | None:
    """Why a request of `device_id` (its row `dev`, None when unknown) is refused, or None: then its
    nonce is spent (in `conn`'s transaction)."""
    if dev is None:
        return "unknown-device"
    if public_key is not None and bytes(dev.public_key) != public_key:
        return "key-changed"
    if dev.status != ACTIVE:
        return "revoked"
    if INSERT_NONCE.first(conn, device_id=device_id, nonce=nonce, seen_at=now) is None:
        return "replay"
    return None


# The device row with its space's sealed card key (NULLs when the space has none).
DEVICE_AND_CARD_KEY = (
    select(T_DEVICE.c.public_key, T_DEVICE.c.status, T_DEVICE.c.space_id, T_CARD_KEY.c.kek_id,
           T_CARD_KEY.c.wrapped_dek, T_CARD_KEY.c.key_ct)
    .select_from(T_DEVICE.outerjoin(T_CARD_KEY, T_CARD_KEY.c.space_id == T_DEVICE.c.space_id))
    .where(T_DEVICE.c.id == bindparam("device_id")))

# The card's org, with an active contract of that org with the space (NULL when there is none).
CARD_AND_CONTRACT = (
    select(T_CARD.c.org_id, T_CONTRACT.c.id.label("contract_id"))
    .select_from(T_CARD.outerjoin(T_CONTRACT, and_(T_CONTRACT.c.space_id == T_CARD.c.space_id,
                                                   T_CONTRACT.c.org_id == T_CARD.c.org_id,
                                                   T_CONTRACT.c.status == ACTIVE)))
    .where(T_CARD.c.space_id == bindparam("space_id"), T_CARD.c.card_hash == bindparam("card_hash"))
    .limit(1))


def _device_and_profile():
    # The device row, with the profile of `org_id` when the device's space has an active contract
    # with that org (NULLs otherwise): one indexed read for every decision of a lookup.
    contract = and_(T_CONTRACT.c.space_id == T_DEVICE.c.space_id, T_CONTRACT.c.org_id == bindparam("org_id"),
                    T_CONTRACT.c.status == ACTIVE)
    return (select(T_DEVICE.c.public_key, T_DEVICE.c.status, T_PROFILE.c.public_json, T_PROFILE.c.kek_id,
                   T_PROFILE.c.wrapped_dek, T_PROFILE.c.secrets_ct, T_PROFILE.c.seal_version)
            .select_from(T_DEVICE.outerjoin(T_CONTRACT, contract)
                         .outerjoin(T_PROFILE, T_PROFILE.c.org_id == T_CONTRACT.c.org_id))
            .where(T_DEVICE.c.id == bindparam("device_id"))
            .limit(1))  # duplicate active contracts join the same profile


class _DeviceRow(NamedTuple):
    public_key: bytes
    status: str
    public_json: str | None
    kek_id: str | None
    wrapped_dek: bytes | None
    secrets_ct: bytes | None
    seal_version: int | None


DEVICE_AND_PROFILE = Prepared(_device_and_profile())
INSERT_NONCE = Prepared(lambda dialect: _insert_nonce(dialect).values(
    device_id=bindparam("device_id"), nonce=bindparam("nonce"), seen_at=bindparam("seen_at"))
    .returning(T_NONCE.c.nonce))
INSERT_AUDIT = Prepared(insert(T_AUDIT).values(
    at=bindparam("at"), device_id=bindparam("device_id"), org_id=bindparam("org_id"), action=bindparam("action"),
    outcome=bindparam("outcome")).inline())


def _insert_nonce(dialect: str):
    # a nonce already seen inserts no row (a replay); the primary key makes it atomic
    return upsert(dialect, T_NONCE).on_conflict_do_nothing(index_elements=["device_id", "nonce"])
