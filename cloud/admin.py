"""Operator actions on the directory (the admin CLI's back end, and the lab's seeding).

Nothing here returns or prints a secret: profiles come back as their public part plus the names of
the secrets they hold. Nothing returns, prints or audits a card id either: a registered card is
shown as its `card_ref` (cloud/cards.py).
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

from sqlalchemy import Engine, and_, delete, func, insert, select, update

from cloud import profiles
from cloud.cards import T_CARD, T_CARD_KEY, CardKeys, card_hash, card_key_aad, card_ref, valid_card
from cloud import refusals
from cloud.crypto import DecryptError, Keyring, Sealed, kek_id, new_kek, read_kek_file, write_kek_file
from cloud.device_ca import T_SPACE_CA, ca_key_aad, revoke_device_in
from cloud.lookup import T_AUDIT, T_CONTRACT, T_DEVICE, T_PROFILE, T_TOKEN, audit, token_hash
from cloud.models import ACTIVE, ENDED, Org, Space
from cloud.sealing import SEAL_BOUND, SEAL_LEGACY, legacy_aad, row_aad, seal_profile
from cloud.storage import read_txn, write_txn
from hal.directory import CARD_ID_RE
from hal.directory.profile import _ID
from hal.directory.signing import load_public_key

T_SPACE, T_ORG = Space.__table__, Org.__table__


class AdminError(Exception):
    """An operator request that cannot be done; the message says why (never a secret)."""


def _check_id(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise AdminError(f"{kind} id must match {_ID.pattern}")
    return value


def _rows(result) -> list[dict]:
    return [dict(r._mapping) for r in result]


class Admin:
    def __init__(self, engine: Engine, keyring: Keyring | None = None):
        self.engine, self._keyring = engine, keyring

    @property
    def keyring(self) -> Keyring:
        if self._keyring is None:
            raise AdminError("this action needs the KEK: pass --kek-file or set TP_CLOUD_KEK_FILE")
        return self._keyring

    def _exists(self, conn, table, id_: str) -> bool:
        return conn.execute(select(table.c.id).where(table.c.id == id_)).first() is not None

    # -- spaces and devices ----------------------------------------------------------------

    def add_space(self, space_id: str, name: str | None = None) -> dict:
        _check_id("space", space_id)
        with write_txn(self.engine) as conn:
            if self._exists(conn, T_SPACE, space_id):
                raise AdminError(f"space {space_id} exists")
            conn.execute(insert(T_SPACE).values(id=space_id, name=name or space_id, created_at=time.time()))
        return {"id": space_id, "name": name or space_id}

    def list_spaces(self) -> list[dict]:
        with read_txn(self.engine) as conn:
            return _rows(conn.execute(select(T_SPACE).order_by(T_SPACE.c.id)))

    def enrol_token(self, space_id: str, device_id: str, ttl_s: int = 3600) -> dict:
        """A one-time token that enrols one device as `device_id` into `space_id`."""
        _check_id("device", device_id)
        if not 60 <= ttl_s <= 30 * 86400:
            raise AdminError("token lifetime must be 60 s to 30 days")
        token = secrets.token_urlsafe(32)
        now = time.time()
        with write_txn(self.engine) as conn:
            if not self._exists(conn, T_SPACE, space_id):
                raise AdminError(f"no space {space_id}")
            if self._exists(conn, T_DEVICE, device_id):
                raise AdminError(f"device {device_id} is already enrolled")
            conn.execute(insert(T_TOKEN).values(token_hash=token_hash(token), space_id=space_id, device_id=device_id,
                                                created_at=now, expires_at=now + ttl_s))
            audit(conn, "enrol-token", "issued", device_id=device_id, at=now)
        return {"token": token, "space_id": space_id, "device_id": device_id, "expires_at": now + ttl_s}

    def register_device(self, space_id: str, device_id: str, public_key: bytes) -> None:
        """Register a device whose key was made elsewhere (lab seeding; enrolment is the normal way)."""
        _check_id("device", device_id)
        try:
            load_public_key(public_key)
        except ValueError:
            raise AdminError("a device key is Ed25519 (32 bytes) or a P-256 point (65 bytes)") from None
        with write_txn(self.engine) as conn:
            if not self._exists(conn, T_SPACE, space_id):
                raise AdminError(f"no space {space_id}")
            if self._exists(conn, T_DEVICE, device_id):
                raise AdminError(f"device {device_id} is already enrolled")
            conn.execute(insert(T_DEVICE).values(id=device_id, space_id=space_id, public_key=public_key,
                                                 status=ACTIVE, enrolled_at=time.time()))
            audit(conn, "register", "granted", device_id=device_id)

    def list_devices(self, space_id: str | None = None) -> list[dict]:
        q = select(T_DEVICE.c.id, T_DEVICE.c.space_id, T_DEVICE.c.status, T_DEVICE.c.enrolled_at,
                   T_DEVICE.c.revoked_at).order_by(T_DEVICE.c.id)
        if space_id:
            q = q.where(T_DEVICE.c.space_id == space_id)
        with read_txn(self.engine) as conn:
            return _rows(conn.execute(q))

    def revoke_device(self, device_id: str) -> int:
        """Revoke an active device: no lookup and no certificate for it any more, and its unexpired
        certificates on its space's CRL (cloud/device_ca.py). Returns how many certificates."""
        now = time.time()
        with write_txn(self.engine) as conn:
            n = revoke_device_in(conn, device_id, now)
            if n is None:
                raise AdminError(f"no active device {device_id}")
            audit(conn, "revoke", "done", device_id=device_id, at=now)
        return n

    # -- orgs and profiles -----------------------------------------------------------------

    def add_org(self, org_id: str, name: str | None = None) -> dict:
        _check_id("org", org_id)
        with write_txn(self.engine) as conn:
            if self._exists(conn, T_ORG, org_id):
                raise AdminError(f"org {org_id} exists")
            conn.execute(insert(T_ORG).values(id=org_id, name=name or org_id, created_at=time.time()))
        return {"id": org_id, "name": name or org_id}

    def list_orgs(self) -> list[dict]:
        q = (select(T_ORG.c.id, T_ORG.c.name, T_PROFILE.c.version.label("profile_version"))
             .select_from(T_ORG.outerjoin(T_PROFILE, T_PROFILE.c.org_id == T_ORG.c.id)).order_by(T_ORG.c.id))
        with read_txn(self.engine) as conn:
            return _rows(conn.execute(q))

    def set_profile(self, org_id: str, wire: dict) -> dict:
        """Validate and store `wire` as the org's profile (secrets sealed, bound to the public part:
        cloud/sealing.py)."""
        try:
            norm = profiles.normalize(wire)
        except profiles.ProfileError as exc:
            raise AdminError(f"invalid profile: {exc}") from None
        if norm["org_id"] != org_id:
            raise AdminError(f"profile org_id {norm['org_id']!r} is not {org_id!r}")
        public, secret = profiles.split(norm)
        values = dict(seal_profile(self.keyring, org_id, public, secret).columns(), updated_at=time.time())
        with write_txn(self.engine) as conn:
            if not self._exists(conn, T_ORG, org_id):
                raise AdminError(f"no org {org_id}")
            cur = conn.execute(select(T_PROFILE.c.version).where(T_PROFILE.c.org_id == org_id)).scalar()
            if cur is None:
                conn.execute(insert(T_PROFILE).values(org_id=org_id, version=1, **values))
            else:
                conn.execute(update(T_PROFILE).where(T_PROFILE.c.org_id == org_id).values(version=cur + 1, **values))
            audit(conn, "set-profile", "done", org_id=org_id)
        return {"org_id": org_id, "version": (cur or 0) + 1}

    def show_org(self, org_id: str) -> dict:
        with read_txn(self.engine) as conn:
            org = conn.execute(select(T_ORG).where(T_ORG.c.id == org_id)).first()
            if org is None:
                raise AdminError(f"no org {org_id}")
            prof = conn.execute(select(T_PROFILE.c.public_json, T_PROFILE.c.version, T_PROFILE.c.kek_id,
                                       T_PROFILE.c.updated_at, T_PROFILE.c.seal_version)
                                .where(T_PROFILE.c.org_id == org_id)).first()
            contracts = _rows(conn.execute(select(T_CONTRACT).where(T_CONTRACT.c.org_id == org_id)))
        out = dict(org._mapping)
        out["contracts"] = contracts
        if prof is None:
            out["profile"] = None
        else:
            public = json.loads(prof.public_json)
            out["profile"] = {"version": prof.version, "kek_id": prof.kek_id, "updated_at": prof.updated_at,
                              "public": public, "secrets_set": profiles.secret_names(public),
                              "sealing": "bound" if prof.seal_version == SEAL_BOUND else "legacy"}
        return out

    # -- contracts -------------------------------------------------------------------------

    def add_contract(self, org_id: str, space_id: str) -> dict:
        with write_txn(self.engine) as conn:
            if not self._exists(conn, T_ORG, org_id):
                raise AdminError(f"no org {org_id}")
            if not self._exists(conn, T_SPACE, space_id):
                raise AdminError(f"no space {space_id}")
            active = conn.execute(select(T_CONTRACT.c.id).where(
                T_CONTRACT.c.org_id == org_id, T_CONTRACT.c.space_id == space_id, T_CONTRACT.c.status == ACTIVE)).first()
            if active is not None:
                raise AdminError(f"org {org_id} already has an active contract with space {space_id}")
            cid = conn.execute(insert(T_CONTRACT).values(org_id=org_id, space_id=space_id, status=ACTIVE,
                                                         started_at=time.time())).inserted_primary_key[0]
            audit(conn, "contract-add", "done", org_id=org_id)
        return {"id": cid, "org_id": org_id, "space_id": space_id, "status": ACTIVE}

    def end_contract(self, org_id: str, space_id: str) -> None:
        with write_txn(self.engine) as conn:
            n = conn.execute(update(T_CONTRACT).where(
                T_CONTRACT.c.org_id == org_id, T_CONTRACT.c.space_id == space_id, T_CONTRACT.c.status == ACTIVE)
                .values(status=ENDED, ended_at=time.time())).rowcount
            if n == 0:
                raise AdminError(f"no active contract between org {org_id} and space {space_id}")
            audit(conn, "contract-end", "done", org_id=org_id)

    def list_contracts(self, org_id: str | None = None, space_id: str | None = None) -> list[dict]:
        q = select(T_CONTRACT).order_by(T_CONTRACT.c.id)
        if org_id:
            q = q.where(T_CONTRACT.c.org_id == org_id)
        if space_id:
            q = q.where(T_CONTRACT.c.space_id == space_id)
        with read_txn(self.engine) as conn:
            return _rows(conn.execute(q))

    # -- cards known by their UID only ------------------------------------------------------

    def _card(self, card: str) -> str:
        if not valid_card(card):
            raise AdminError(f"card id must match {CARD_ID_RE.pattern}")  # never echoed: a UID
        return card

    def _active_contract(self, conn, org_id: str, space_id: str) -> bool:
        return conn.execute(select(T_CONTRACT.c.id).where(
            T_CONTRACT.c.org_id == org_id, T_CONTRACT.c.space_id == space_id, T_CONTRACT.c.status == ACTIVE)
        ).first() is not None

    def add_card(self, space_id: str, org_id: str, card: str) -> dict:
        """Register `card` to `org_id` in `space_id`. Refused unless the org has an active contract
        with the space, or when the card is registered to another org there (one org per card and
        space). Registering it again to the same org changes nothing (`added` is False)."""
        self._card(card)
        cards = CardKeys(self.keyring)
        now = time.time()
        with write_txn(self.engine) as conn:
            if not self._exists(conn, T_SPACE, space_id):
                raise AdminError(f"no space {space_id}")
            if not self._exists(conn, T_ORG, org_id):
                raise AdminError(f"no org {org_id}")
            if not self._active_contract(conn, org_id, space_id):
                raise AdminError(f"org {org_id} has no active contract with space {space_id}")
            hashed = card_hash(cards.ensure(conn, space_id), card)
            ref = card_ref(hashed)
            row = conn.execute(select(T_CARD.c.org_id, T_CARD.c.added_at).where(
                T_CARD.c.space_id == space_id, T_CARD.c.card_hash == hashed)).first()
            if row is not None and row.org_id != org_id:
                audit(conn, "card-add", "refused-other-org", org_id=org_id, at=now, card_ref=ref)
                refused = True
            elif row is not None:
                return {"space_id": space_id, "org_id": org_id, "card_ref": ref, "added_at": row.added_at,
                        "added": False}
            else:
                conn.execute(insert(T_CARD).values(space_id=space_id, card_hash=hashed, org_id=org_id, added_at=now))
                audit(conn, "card-add", "done", org_id=org_id, at=now, card_ref=ref)
                refused = False
        if refused:  # after the commit: the refusal's audit record stays
            raise AdminError(f"card {ref} is registered to another org in space {space_id}")
        return {"space_id": space_id, "org_id": org_id, "card_ref": ref, "added_at": now, "added": True}

    def remove_card(self, space_id: str, card: str) -> dict:
        self._card(card)
        with write_txn(self.engine) as conn:
            key = CardKeys(self.keyring).find(conn, space_id)
            hashed = None if key is None else card_hash(key, card)
            row = None if hashed is None else conn.execute(select(T_CARD.c.id, T_CARD.c.org_id).where(
                T_CARD.c.space_id == space_id, T_CARD.c.card_hash == hashed)).first()
            if row is None:
                raise AdminError(f"no such card registered in space {space_id}")
            conn.execute(delete(T_CARD).where(T_CARD.c.id == row.id))
            audit(conn, "card-remove", "done", org_id=row.org_id, card_ref=card_ref(hashed))
        return {"space_id": space_id, "org_id": row.org_id, "card_ref": card_ref(hashed)}

    def list_cards(self, space_id: str | None = None, org_id: str | None = None) -> list[dict]:
        """Registered cards: space, org, `card_ref` and when added (never the card id nor the hash)."""
        q = select(T_CARD.c.space_id, T_CARD.c.org_id, T_CARD.c.card_hash, T_CARD.c.added_at).order_by(
            T_CARD.c.space_id, T_CARD.c.org_id, T_CARD.c.added_at)
        if space_id:
            q = q.where(T_CARD.c.space_id == space_id)
        if org_id:
            q = q.where(T_CARD.c.org_id == org_id)
        with read_txn(self.engine) as conn:
            return [{"space_id": r.space_id, "org_id": r.org_id, "card_ref": card_ref(r.card_hash),
                     "added_at": r.added_at} for r in conn.execute(q)]

    # -- audit and keys --------------------------------------------------------------------

    def audit(self, org_id: str | None = None, device_id: str | None = None, since: float | None = None,
              until: float | None = None, limit: int = 1000) -> list[dict]:
        conds = []
        if org_id:
            conds.append(T_AUDIT.c.org_id == org_id)
        if device_id:
            conds.append(T_AUDIT.c.device_id == device_id)
        if since is not None:
            conds.append(T_AUDIT.c.at >= since)
        if until is not None:
            conds.append(T_AUDIT.c.at <= until)
        q = select(T_AUDIT).where(and_(True, *conds)).order_by(T_AUDIT.c.id.desc()).limit(limit)
        with read_txn(self.engine) as conn:
            return list(reversed(_rows(conn.execute(q))))

    def refusal_counts(self, since: float | None = None, until: float | None = None) -> list[dict]:
        """Counted refusals (cloud/refusals.py), one summary per minute: total, by action/reason,
        by source prefix. Never a device or org: none of these requests proved one."""
        return refusals.summarize(refusals.counted(self.engine, since, until))

    def legacy_profiles(self) -> int:
        """How many profiles are sealed without their public part (refused until re-sealed)."""
        with read_txn(self.engine) as conn:
            return conn.execute(select(func.count()).select_from(T_PROFILE)
                                .where(T_PROFILE.c.seal_version == SEAL_LEGACY)).scalar()

    def reseal_profiles(self, batch: int = 500) -> dict:
        """Re-seal every profile sealed before its public part was bound (seal_version 1), binding
        the public part as stored now (cloud/sealing.py: run right after the upgrade). Each row
        under a fresh data key and the active KEK; one transaction per batch; audited per org."""
        done = 0
        while True:
            with write_txn(self.engine) as conn:
                rows = conn.execute(select(T_PROFILE.c.org_id, T_PROFILE.c.public_json, T_PROFILE.c.kek_id,
                                           T_PROFILE.c.wrapped_dek, T_PROFILE.c.secrets_ct)
                                    .where(T_PROFILE.c.seal_version == SEAL_LEGACY).limit(batch)).all()
                for r in rows:
                    try:
                        secret = self.keyring.open(Sealed(r.kek_id, r.wrapped_dek, r.secrets_ct), legacy_aad(r.org_id))
                    except DecryptError as exc:
                        raise AdminError(f"profile of org {r.org_id} does not open ({exc}): set it again") from None
                    sealed = seal_profile(self.keyring, r.org_id, json.loads(r.public_json), secret)
                    conn.execute(update(T_PROFILE).where(T_PROFILE.c.org_id == r.org_id).values(**sealed.columns()))
                    audit(conn, "reseal-profile", "done", org_id=r.org_id)
            done += len(rows)
            if len(rows) < batch:
                return {"resealed": done}

    def rotate_key(self, kek_file: Path, batch: int = 500) -> dict:
        """Make a new KEK and re-wrap every record's data key under it, in place:
        1. the KEK file becomes [new, old...] (running servers re-read it when they meet the new id),
        2. every record (profiles, the spaces' card keys and device CA keys) is re-wrapped under
           the new KEK (batches, each its own transaction),
        3. the file becomes [new].
        Card hashes do not change: their key is re-wrapped, not replaced."""
        kek_file = Path(kek_file)
        old = read_kek_file(kek_file)
        fresh = new_kek()
        write_kek_file(kek_file, [fresh] + old)
        ring = Keyring(kek_file)
        new_id = kek_id(fresh)
        done = self._rewrap(ring, new_id, batch, T_PROFILE, T_PROFILE.c.org_id, T_PROFILE.c.secrets_ct,
                            lambda r: row_aad(r[0], r[4], r[5]), T_PROFILE.c.public_json, T_PROFILE.c.seal_version)
        card_keys = self._rewrap(ring, new_id, batch, T_CARD_KEY, T_CARD_KEY.c.space_id, T_CARD_KEY.c.key_ct,
                                 lambda r: card_key_aad(r[0]))
        ca_keys = self._rewrap(ring, new_id, batch, T_SPACE_CA, T_SPACE_CA.c.space_id, T_SPACE_CA.c.key_ct,
                               lambda r: ca_key_aad(r[0], r[4]), T_SPACE_CA.c.cert_pem)
        write_kek_file(kek_file, [fresh])
        with write_txn(self.engine) as conn:
            audit(conn, "rotate-key", "done")
        self._keyring = Keyring(kek_file)
        return {"kek_id": new_id, "retired": [kek_id(k) for k in old], "rewrapped": done,
                "card_keys_rewrapped": card_keys, "ca_keys_rewrapped": ca_keys}

    def _rewrap(self, ring: Keyring, new_id: str, batch: int, table, key_col, ct_col, aad_of, *extra) -> int:
        """Re-wrap the data key of every row of `table` not yet under KEK `new_id`; `aad_of` makes
        a row's associated data from (key, kek_id, wrapped_dek, ciphertext, *extra)."""
        done = 0
        while True:
            with write_txn(self.engine) as conn:
                rows = conn.execute(select(key_col, table.c.kek_id, table.c.wrapped_dek, ct_col, *extra)
                                    .where(table.c.kek_id != new_id).limit(batch)).all()
                for r in rows:
                    try:
                        s = ring.rewrap(Sealed(r[1], r[2], r[3]), aad_of(r), new_id)
                    except DecryptError as exc:  # the KEK file now lists [new, old]: rotate again once fixed
                        raise AdminError(f"{table.name} {r[0]} does not open ({exc}): set it again, then "
                                         "rotate-key") from None
                    conn.execute(update(table).where(key_col == r[0]).values(kek_id=s.kek_id, wrapped_dek=s.wrapped_dek))
            done += len(rows)
            if len(rows) < batch:
                return done
