"""Operator actions on the directory (the admin CLI's back end, and the lab's seeding).

Nothing here returns or prints a secret: profiles come back as their public part plus the names of
the secrets they hold.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

from sqlalchemy import Engine, and_, insert, select, update

from cloud import profiles
from cloud.crypto import Keyring, Sealed, kek_id, new_kek, read_kek_file, write_kek_file
from cloud.lookup import T_AUDIT, T_CONTRACT, T_DEVICE, T_PROFILE, T_TOKEN, aad, audit, token_hash
from cloud.models import ACTIVE, ENDED, REVOKED, Org, Space
from cloud.storage import read_txn, write_txn
from hal.directory.profile import _ID

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
        if len(public_key) != 32:
            raise AdminError("an Ed25519 public key is 32 bytes")
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

    def revoke_device(self, device_id: str) -> None:
        with write_txn(self.engine) as conn:
            n = conn.execute(update(T_DEVICE).where(T_DEVICE.c.id == device_id, T_DEVICE.c.status == ACTIVE)
                             .values(status=REVOKED, revoked_at=time.time())).rowcount
            if n != 1:
                raise AdminError(f"no active device {device_id}")
            audit(conn, "revoke", "done", device_id=device_id)

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
        """Validate and store `wire` as the org's profile (secrets sealed)."""
        try:
            norm = profiles.normalize(wire)
        except profiles.ProfileError as exc:
            raise AdminError(f"invalid profile: {exc}") from None
        if norm["org_id"] != org_id:
            raise AdminError(f"profile org_id {norm['org_id']!r} is not {org_id!r}")
        public, secret = profiles.split(norm)
        sealed = self.keyring.seal(secret, aad(org_id))
        values = dict(public_json=json.dumps(public), kek_id=sealed.kek_id, wrapped_dek=sealed.wrapped_dek,
                      secrets_ct=sealed.ciphertext, updated_at=time.time())
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
                                       T_PROFILE.c.updated_at).where(T_PROFILE.c.org_id == org_id)).first()
            contracts = _rows(conn.execute(select(T_CONTRACT).where(T_CONTRACT.c.org_id == org_id)))
        out = dict(org._mapping)
        out["contracts"] = contracts
        if prof is None:
            out["profile"] = None
        else:
            public = json.loads(prof.public_json)
            out["profile"] = {"version": prof.version, "kek_id": prof.kek_id, "updated_at": prof.updated_at,
                              "public": public, "secrets_set": profiles.secret_names(public)}
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

    def rotate_key(self, kek_file: Path, batch: int = 500) -> dict:
        """Make a new KEK and re-wrap every record's data key under it, in place:
        1. the KEK file becomes [new, old...] (running servers re-read it when they meet the new id),
        2. every record is re-wrapped under the new KEK (batches, each its own transaction),
        3. the file becomes [new]."""
        kek_file = Path(kek_file)
        old = read_kek_file(kek_file)
        fresh = new_kek()
        write_kek_file(kek_file, [fresh] + old)
        ring = Keyring(kek_file)
        new_id = kek_id(fresh)
        done = 0
        while True:
            with write_txn(self.engine) as conn:
                rows = conn.execute(select(T_PROFILE.c.org_id, T_PROFILE.c.kek_id, T_PROFILE.c.wrapped_dek,
                                           T_PROFILE.c.secrets_ct).where(T_PROFILE.c.kek_id != new_id)
                                    .limit(batch)).all()
                for r in rows:
                    s = ring.rewrap(Sealed(r.kek_id, r.wrapped_dek, r.secrets_ct), aad(r.org_id), new_id)
                    conn.execute(update(T_PROFILE).where(T_PROFILE.c.org_id == r.org_id)
                                 .values(kek_id=s.kek_id, wrapped_dek=s.wrapped_dek))
            done += len(rows)
            if len(rows) < batch:
                break
        write_kek_file(kek_file, [fresh])
        with write_txn(self.engine) as conn:
            audit(conn, "rotate-key", "done")
        self._keyring = Keyring(kek_file)
        return {"kek_id": new_id, "retired": [kek_id(k) for k in old], "rewrapped": done}
