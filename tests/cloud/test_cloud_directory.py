"""The directory, in process (ASGI) on SQLite and on PostgreSQL: enrolment, signed lookups,
refusals, audit, secrets at rest, key rotation."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from conftest import CANARY
from hal.directory import DirectoryRefused
from hal.directory.client import load_key
from hal.directory.signing import sign_headers


def signed_get(cloud, device, org: str, *, key=None, **kw):
    path = f"/v1/orgs/{org}/profile"
    headers = sign_headers(key or load_key(device.key_path), device.device_id, "GET", path, b"", **kw)
    return cloud.http.get(path, headers=headers), headers


def audit_outcomes(cloud, org=None, device=None):
    return [(e["action"], e["outcome"]) for e in cloud.admin.audit(org_id=org, device_id=device)]


# -- enrolment --------------------------------------------------------------------------------

def test_enrolment_makes_key_on_device_and_token_is_one_time(cloud, tmp_path):
    dev = cloud.enrol()
    assert dev.device_id == "mfp-1.space-1" and dev.space_id == "space-1"
    assert stat.S_IMODE(os.stat(dev.key_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(dev.key_path.parent).st_mode) == 0o700
    assert json.loads((dev.key_path.parent / "device.json").read_text())["device_id"] == dev.device_id
    devices = cloud.admin.list_devices()
    assert [(d["id"], d["status"]) for d in devices] == [("mfp-1.space-1", "active")]
    # the token is stored hashed and works once
    token = cloud.admin.enrol_token("space-1", "mfp-2")["token"]
    with cloud.engine.connect() as c:
        stored = [r[0] for r in c.execute(text("SELECT token_hash FROM enrolment_token"))]
    assert token not in stored
    from hal.directory.client import enrol
    enrol("http://testserver", token, tmp_path / "k2", http=cloud.http)
    with pytest.raises(DirectoryRefused):
        enrol("http://testserver", token, tmp_path / "k3", http=cloud.http)
    assert not (tmp_path / "k3" / "device.key").exists()
    with pytest.raises(DirectoryRefused):
        enrol("http://testserver", "not-a-token", tmp_path / "k4", http=cloud.http)
    assert ("enrol", "refused") in audit_outcomes(cloud)


def test_expired_token_is_refused(cloud, tmp_path):
    token = cloud.admin.enrol_token("space-1", "mfp-3", ttl_s=60)["token"]
    with cloud.engine.begin() as c:  # age the token instead of waiting for it
        c.execute(text("UPDATE enrolment_token SET expires_at = :t"), {"t": time.time() - 1})
    from hal.directory.client import enrol
    with pytest.raises(DirectoryRefused):
        enrol("http://testserver", token, tmp_path / "k", http=cloud.http)


def test_enrolment_rejects_a_bad_public_key(cloud):
    token = cloud.admin.enrol_token("space-1", "mfp-4")["token"]
    r = cloud.http.post("/v1/enrol", json={"token": token, "public_key": "AAAA"})
    assert r.status_code == 403 and r.json() == {"error": "refused"}


# -- lookups ----------------------------------------------------------------------------------

def test_lookup_granted_with_a_contract(cloud):
    dev = cloud.enrol()
    profile = cloud.client(dev).fetch_profile("acme")
    assert profile.org_id == "acme" and profile.ttl_s == 300
    assert profile.vpn.psk.reveal().decode() == cloud.profiles["acme"]["vpn"]["psk"]
    assert profile.auth.secret.reveal().decode() == cloud.profiles["acme"]["auth"]["secret"]
    assert CANARY not in repr(profile)
    r, _ = signed_get(cloud, dev, "globex")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert r.json()["ttl_s"] == 300
    assert audit_outcomes(cloud, org="acme", device=dev.device_id)[-1] == ("lookup", "granted")


def test_refusals_are_identical_for_no_contract_and_unknown_org(cloud):
    dev = cloud.enrol()
    answers = {}
    for org in ("initech", "no-such-org", "-bad"):
        r, _ = signed_get(cloud, dev, org)
        answers[org] = (r.status_code, r.content, sorted(k for k in r.headers if k != "content-length"))
    assert answers["initech"] == answers["no-such-org"] == answers["-bad"]
    assert answers["initech"][:2] == (403, b'{"error":"refused"}')
    with pytest.raises(DirectoryRefused) as err:
        cloud.client(dev).fetch_profile("initech")
    assert err.value.status == 403
    refused = audit_outcomes(cloud, device=dev.device_id)
    assert refused.count(("lookup", "refused")) == 4  # every refusal is audited, the bad id too


def test_ended_contract_refuses(cloud):
    dev = cloud.enrol()
    cloud.client(dev).fetch_profile("acme")
    cloud.admin.end_contract("acme", "space-1")
    with pytest.raises(DirectoryRefused):
        cloud.client(dev).fetch_profile("acme")


def test_revoked_device_is_refused(cloud):
    dev = cloud.enrol()
    client = cloud.client(dev)
    client.fetch_profile("acme")
    cloud.admin.revoke_device(dev.device_id)
    with pytest.raises(DirectoryRefused) as err:
        client.fetch_profile("acme")
    assert err.value.status == 401 and err.value.device_rejected
    assert audit_outcomes(cloud, device=dev.device_id)[-1] == ("lookup", "revoked")


def test_forged_signature_and_tampered_request_are_refused(cloud):
    dev = cloud.enrol()
    r, _ = signed_get(cloud, dev, "acme", key=Ed25519PrivateKey.generate())
    assert (r.status_code, r.json()) == (401, {"error": "unauthenticated"})
    # signed for acme, sent for globex
    headers = sign_headers(load_key(dev.key_path), dev.device_id, "GET", "/v1/orgs/acme/profile", b"")
    assert cloud.http.get("/v1/orgs/globex/profile", headers=headers).status_code == 401
    # unknown device
    headers = sign_headers(load_key(dev.key_path), "mfp-ghost", "GET", "/v1/orgs/acme/profile", b"")
    assert cloud.http.get("/v1/orgs/acme/profile", headers=headers).status_code == 401
    # no headers at all
    assert cloud.http.get("/v1/orgs/acme/profile").status_code == 401
    # none of these proved a device: counted (cloud/refusals.py), not audited in anyone's name
    assert [a for a, _ in audit_outcomes(cloud) if a == "lookup"] == []
    cloud.app.state.directory.refusals.flush()
    counted = {k: n for s in cloud.admin.refusal_counts() for k, n in s["reasons"].items()}
    assert counted == {"lookup/bad-signature": 2, "lookup/unknown-device": 1, "lookup/missing-headers": 1}


def test_replayed_request_is_refused(cloud):
    dev = cloud.enrol()
    r1, headers = signed_get(cloud, dev, "acme")
    assert r1.status_code == 200
    r2 = cloud.http.get("/v1/orgs/acme/profile", headers=headers)
    assert (r2.status_code, r2.json()) == (401, {"error": "unauthenticated"})
    assert ("lookup", "replay") in audit_outcomes(cloud, device=dev.device_id)


def test_stale_and_future_timestamps_are_refused(cloud):
    dev = cloud.enrol()
    for skew in (-120, 120):
        r, _ = signed_get(cloud, dev, "acme", now=time.time() + skew)
        assert r.status_code == 401
    assert audit_outcomes(cloud, device=dev.device_id)[-1] == ("lookup", "stale")


def test_old_nonces_expire(cloud):
    from cloud.lookup import DeviceDirectory
    from cloud.storage import write_txn
    dev = cloud.enrol()
    for _ in range(3):
        assert signed_get(cloud, dev, "acme")[0].status_code == 200
    d = DeviceDirectory(cloud.engine, cloud.keyring, window_s=60)
    with write_txn(cloud.engine) as c:
        assert d.purge_nonces(c, time.time()) == 0
        assert d.purge_nonces(c, time.time() + 200) == 3


# -- audit, secrets at rest, keys -------------------------------------------------------------

def test_audit_is_append_only(cloud):
    dev = cloud.enrol()
    cloud.client(dev).fetch_profile("acme")
    with pytest.raises(Exception, match="append-only"):
        with cloud.engine.begin() as c:
            c.execute(text("UPDATE audit_event SET outcome = 'granted'"))
    with pytest.raises(Exception, match="append-only"):
        with cloud.engine.begin() as c:
            c.execute(text("DELETE FROM audit_event"))
    since = time.time() - 60
    assert cloud.admin.audit(org_id="acme", since=since)[-1]["outcome"] == "granted"
    assert cloud.admin.audit(until=since) == []


def _raw_storage(cloud) -> bytes:
    """Every byte the database holds for us: the SQLite files, or every row of every table."""
    if cloud.db_url.startswith("sqlite"):
        path = cloud.db_url[len("sqlite:///"):]
        return b"".join(open(p, "rb").read() for p in (path, path + "-wal") if os.path.exists(p))
    out = []
    with cloud.engine.connect() as c:
        for table in ("space", "device", "org", "contract", "org_profile", "enrolment_token", "audit_event",
                      "request_nonce"):
            for row in c.execute(text(f"SELECT * FROM {table}")):
                out.append(repr(tuple(row)).encode())
        out.append(c.execute(text("SELECT string_agg(encode(secrets_ct, 'escape'), '') FROM org_profile")).scalar()
                   .encode(errors="replace"))
    return b"\n".join(out)


def test_secrets_are_not_readable_at_rest(cloud):
    dev = cloud.enrol()
    cloud.client(dev).fetch_profile("acme")
    raw = _raw_storage(cloud)
    assert b"10.78.0.11" in raw or cloud.db_url.startswith("postgresql")  # the public part is there
    assert CANARY.encode() not in raw
    for wire in cloud.profiles.values():
        assert wire["vpn"]["psk"].encode() not in raw


def test_rotation_keeps_profiles_readable(cloud, tmp_path):
    from cloud.crypto import DecryptError, Keyring, kek_id, read_kek_file, write_kek_file
    dev = cloud.enrol()
    client = cloud.client(dev)
    before = client.fetch_profile("acme").vpn.psk.reveal()
    old_keys = read_kek_file(cloud.kek_file)
    out = cloud.admin.rotate_key(cloud.kek_file)
    assert out["rewrapped"] == 3 and out["retired"] == [kek_id(old_keys[0])]
    new_keys = read_kek_file(cloud.kek_file)
    assert len(new_keys) == 1 and kek_id(new_keys[0]) == out["kek_id"] != kek_id(old_keys[0])
    assert stat.S_IMODE(os.stat(cloud.kek_file).st_mode) == 0o600
    # the running app had only the old KEK in memory: it re-reads the file and still answers
    assert client.fetch_profile("acme").vpn.psk.reveal() == before
    assert cloud.admin.show_org("acme")["profile"]["kek_id"] == out["kek_id"]
    # the old KEK alone opens nothing any more
    old_file = tmp_path / "old-kek"
    write_kek_file(old_file, old_keys)
    from cloud.lookup import DeviceDirectory, Refused
    d = DeviceDirectory(cloud.engine, Keyring(old_file))
    import secrets as _s
    with pytest.raises((DecryptError, Refused)):
        d.lookup(dev.device_id, _s.token_hex(16), "acme")


def test_kek_file_must_be_private(tmp_path):
    from cloud.crypto import KekFileError, Keyring, new_kek, write_kek_file
    path = tmp_path / "kek"
    write_kek_file(path, [new_kek()])
    os.chmod(path, 0o644)
    with pytest.raises(KekFileError, match="chmod 600"):
        Keyring(path)
    path.write_text("not base64!\n")
    os.chmod(path, 0o600)
    with pytest.raises(KekFileError) as err:
        Keyring(path)
    assert "not base64" in str(err.value)


def test_moved_ciphertext_does_not_decrypt(cloud):
    """A ciphertext copied onto another org's row (a DB-level attack) is refused, not served."""
    dev = cloud.enrol()
    with cloud.engine.begin() as c:
        row = c.execute(text("SELECT kek_id, wrapped_dek, secrets_ct FROM org_profile WHERE org_id='globex'")).first()
        c.execute(text("UPDATE org_profile SET kek_id=:k, wrapped_dek=:w, secrets_ct=:s WHERE org_id='acme'"),
                  {"k": row[0], "w": row[1], "s": row[2]})
    r, _ = signed_get(cloud, dev, "acme")
    assert r.status_code == 503 and r.json() == {"error": "unavailable"}


# -- the fast lookup path keeps every decision ------------------------------------------------

def test_cached_device_key_never_outlives_the_device_row(cloud):
    """The per-process key cache only saves a read: a request verified with a cached key that is
    no longer the device's key in the database (DB surgery) is refused, and the new key works."""
    from cryptography.hazmat.primitives import serialization
    dev = cloud.enrol()
    assert signed_get(cloud, dev, "acme")[0].status_code == 200  # the key is cached now
    new_key = Ed25519PrivateKey.generate()
    raw = new_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    with cloud.engine.begin() as c:
        c.execute(text("UPDATE device SET public_key = :k WHERE id = :d"), {"k": raw, "d": dev.device_id})
    r, _ = signed_get(cloud, dev, "acme")
    assert (r.status_code, r.json()) == (401, {"error": "unauthenticated"})
    assert audit_outcomes(cloud, device=dev.device_id)[-1] == ("lookup", "key-changed")
    assert signed_get(cloud, dev, "acme", key=new_key)[0].status_code == 200


def test_every_lookup_has_exactly_one_audit_record(cloud):
    dev = cloud.enrol()
    r1, headers = signed_get(cloud, dev, "acme")
    r2 = cloud.http.get("/v1/orgs/acme/profile", headers=headers)  # replay
    r3, _ = signed_get(cloud, dev, "initech")  # contract with another space
    r4, _ = signed_get(cloud, dev, "no-such-org")
    r5, _ = signed_get(cloud, dev, "acme", key=Ed25519PrivateKey.generate())
    cloud.admin.revoke_device(dev.device_id)
    r6, _ = signed_get(cloud, dev, "acme")
    assert [r.status_code for r in (r1, r2, r3, r4, r5, r6)] == [200, 401, 403, 403, 401, 401]
    lookups = [(e["org_id"], e["outcome"]) for e in cloud.admin.audit(device_id=dev.device_id)
               if e["action"] == "lookup"]
    assert lookups == [("acme", "granted"), ("acme", "replay"), ("initech", "refused"), ("no-such-org", "refused"),
                       ("acme", "revoked")]  # r5's signature did not verify: counted, never the device's
    # only the granted and the refused lookups spent a nonce
    with cloud.engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM request_nonce WHERE device_id = :d"),
                         {"d": dev.device_id}).scalar() == 3
