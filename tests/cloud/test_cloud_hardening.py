"""Issue 18, the cloud's part, on SQLite and PostgreSQL: unauthenticated refusals are counted (a
bounded number of rows, never a device's), rate limits answer 429 and spare the device's own paced
lookups and other sources, a device seen from a new address is an audited anomaly, the API docs
are served only when configured, and a profile's public part is bound into its sealed part (an
edited public part is refused and audited `tampered`; rows sealed the old way wait for
`reseal-profiles`)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from conftest import CANARY, free_port
from hal.directory.client import load_key
from hal.directory.signing import public_key_b64, sign_headers

REPO = Path(__file__).resolve().parents[2]
DEVICE_SRC, ATTACKER_SRC, OTHER_SRC = "198.51.100.10", "203.0.113.7", "192.0.2.44"


@pytest.fixture
def sqlite_cloud(kek_file, tmp_path):
    """The cloud fixture on SQLite only: for the tests of per-process memory (rate limits, the
    counters' aggregation) whose hundreds of requests would only repeat themselves on PostgreSQL;
    the counters' and anomalies' writes run on both databases in the other tests."""
    from conftest import Cloud
    c = Cloud(f"sqlite:///{tmp_path / 'cloud.db'}", kek_file, tmp_path / "keys")
    yield c
    c.close()


def at(cloud, host: str) -> TestClient:
    """A test client of the cloud's app whose requests come from `host`."""
    return TestClient(cloud.app, base_url="http://testserver", client=(host, 40000),
                      raise_server_exceptions=False)


def lookup(http, device_id: str, key, org: str = "acme") -> httpx.Response:
    path = f"/v1/orgs/{org}/profile"
    return http.get(path, headers=sign_headers(key, device_id, "GET", path, b""))


def count(cloud, table: str) -> int:
    with cloud.engine.connect() as c:
        return c.execute(select(func.count()).select_from(text(table))).scalar()


def counted(cloud) -> dict[str, int]:
    cloud.app.state.directory.refusals.flush()
    out: dict[str, int] = {}
    for s in cloud.admin.refusal_counts():
        for k, n in s["reasons"].items():
            out[k] = out.get(k, 0) + n
    return out


def _cli(capsys, cloud, *args) -> tuple[int, str]:
    from cloud.cli import main
    rc = main(["--db", cloud.db_url, "--kek-file", str(cloud.kek_file), *args])
    out = capsys.readouterr()
    return rc, out.out + out.err


# -- unauthenticated refusals are counted -----------------------------------------------------

def test_400_junk_requests_add_a_bounded_number_of_rows_none_naming_the_device(sqlite_cloud, capsys):
    """400 unauthenticated requests (random device and org ids, the real device's id with a key
    that is not its own, no headers, malformed headers, card lookups, unknown enrolment tokens):
    no audit row at all, a handful of counter rows (one per minute, reason and source prefix), no
    claimed id stored anywhere. The source limit is off here so every request reaches the checks."""
    cloud = sqlite_cloud
    cloud.reconfigure({"limits": {"source_per_min": 0, "enrol_per_min": 0}})
    dev = cloud.enrol()
    junk_ids = [f"mfp-{secrets.token_hex(6)}" for _ in range(150)]
    audit_before, rows_before = count(cloud, "audit_event"), count(cloud, "refusal_count")
    http, forged = at(cloud, ATTACKER_SRC), Ed25519PrivateKey.generate()
    statuses = []
    for i, device_id in enumerate(junk_ids):  # 150 unknown devices, random orgs
        statuses.append(lookup(http, device_id, forged, f"org-{secrets.token_hex(4)}").status_code)
        if i % 3 == 0:  # 50 card lookups of unknown devices
            path, body = "/v1/cards/lookup", b'{"card": "card-04c0ffee5a1e01"}'
            statuses.append(http.post(path, content=body, headers={
                **sign_headers(forged, device_id, "POST", path, body), "Content-Type": "application/json"}).status_code)
    for _ in range(100):  # the real device's id, not its key
        statuses.append(lookup(http, dev.device_id, forged, f"org-{secrets.token_hex(4)}").status_code)
    for _ in range(50):
        statuses.append(http.get("/v1/orgs/acme/profile").status_code)
    for _ in range(25):
        statuses.append(http.get("/v1/orgs/acme/profile", headers={
            "X-TP-Device": dev.device_id, "X-TP-Timestamp": "soon", "X-TP-Nonce": "x", "X-TP-Signature": "!"}).status_code)
    for _ in range(25):
        statuses.append(http.post("/v1/enrol", json={"token": secrets.token_urlsafe(32),
                                                    "public_key": public_key_b64(forged)}).status_code)
    assert len(statuses) == 400 and set(statuses) <= {401, 403}
    http.close()

    assert count(cloud, "audit_event") == audit_before  # not one row
    assert cloud.admin.audit(device_id=dev.device_id)[-1]["action"] == "enrol"  # nothing since its enrolment
    assert counted(cloud) == {"lookup/unknown-device": 150, "card-lookup/unknown-device": 50,
                              "lookup/bad-signature": 100, "lookup/missing-headers": 50,
                              "lookup/malformed-headers": 25, "enrol/unknown-token": 25}
    added = count(cloud, "refusal_count") - rows_before
    # The bound: one row per (minute, action, reason, source prefix); these 400 come from one
    # address and hit 6 reasons, so at most 6 rows per minute they span (12 if a minute turned).
    assert added <= 12
    with cloud.engine.connect() as c:
        stored = json.dumps([list(map(str, r)) for r in c.execute(text("SELECT * FROM refusal_count"))])
    assert dev.device_id not in stored and not any(j in stored for j in junk_ids) and "org-" not in stored
    assert "203.0.113.0/24" in stored  # the source's /24, not the address

    rc, out = _cli(capsys, cloud, "audit")
    assert rc == 0 and "refused without a verified device" in out
    line = [ln for ln in out.splitlines() if "lookup/unknown-device" in ln][0]
    assert "from 203.0.113.0/24" in line and dev.device_id not in out.split("refused without")[1]
    rc, out = _cli(capsys, cloud, "audit", "--refusals", "--json")
    assert rc == 0 and sum(s["total"] for s in json.loads(out)) == 400
    rc, out = _cli(capsys, cloud, "audit", "--device", dev.device_id)  # counters name no device
    assert rc == 0 and "refused without" not in out


def test_counter_rows_are_bounded_however_many_sources(tmp_path):
    """Many source prefixes in one minute: beyond MAX_PREFIXES they are counted as `other`; an
    unknown reason or action is `other` too (the bound holds for whatever calls `note`)."""
    from cloud.refusals import MAX_PREFIXES, REASONS, RefusalCounter, counted as counted_rows
    from cloud.storage import migrate, open_engine
    engine = open_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    now = [1_700_000_010.0]
    counter = RefusalCounter(engine, clock=lambda: now[0])
    for i in range(500):
        counter.note("lookup", "bad-signature", f"10.{i // 256}.{i % 256}.9")
        counter.note("lookup", f"made-up-{i}", "10.0.0.1")
        counter.note(f"action-{i}", "bad-signature", "10.0.0.1")
    counter.flush()
    rows = counted_rows(engine)
    assert len(rows) <= 3 * (MAX_PREFIXES + 1) <= len(REASONS) * (MAX_PREFIXES + 1)
    assert sum(r["count"] for r in rows) == 1500
    assert {r["source_prefix"] for r in rows if r["reason"] == "bad-signature"} >= {"other", "10.0.0.0/24"}
    now[0] += 60  # the next minute: its own rows
    counter.note("enrol", "unknown-token", "2001:db8:1:2::5")
    counter.flush()
    assert counted_rows(engine)[-1] | {"count": 1} == {"bucket": 1_700_000_040, "action": "enrol", "reason": "unknown-token",
                                                       "source_prefix": "2001:db8:1::/48", "count": 1}
    engine.dispose()


# -- rate limits --------------------------------------------------------------------------------

def test_rate_limits_answer_429_and_spare_the_device_and_other_sources(sqlite_cloud):
    cloud = sqlite_cloud
    dev = cloud.enrol()
    key = load_key(dev.key_path)
    limits = cloud.app.state.limits
    clock = [1000.0]
    for buckets in (limits.source, limits.device, limits.enrol):
        buckets.clock = lambda: clock[0]
    attacker, device, other = at(cloud, ATTACKER_SRC), at(cloud, DEVICE_SRC), at(cloud, OTHER_SRC)
    laptop = at(cloud, "203.0.113.77")  # the thief's, with the copied key
    forged = Ed25519PrivateKey.generate()

    # a burst from one source beyond its 40: 429 with Retry-After, counted, nothing parsed
    codes = [lookup(attacker, f"mfp-{i}", forged).status_code for i in range(60)]
    assert codes == [401] * 40 + [429] * 20
    r = lookup(attacker, "mfp-x", forged)
    assert (r.status_code, r.json()) == (429, {"error": "rate-limited"}) and int(r.headers["retry-after"]) >= 1
    assert attacker.post("/v1/cards/lookup", content=b"{}").status_code == 429  # one bucket for both lookups
    assert other.get("/v1/orgs/acme/profile").status_code == 401  # another source: unaffected
    assert lookup(device, dev.device_id, key).status_code == 200

    # the device's own lookups at a tap every 2 s (30 a minute) for 2 minutes: every one passes
    for i in range(60):
        clock[0] += 2
        assert lookup(device, dev.device_id, key, ("acme", "globex")[i % 2]).status_code == 200, i

    # replays of a captured request are refused and spend none of the device's tokens
    clock[0] += 60
    path = "/v1/orgs/acme/profile"
    captured = sign_headers(key, dev.device_id, "GET", path, b"")
    assert [device.get(path, headers=captured).status_code for _ in range(11)] == [200] + [401] * 10
    # the device's key signing faster than its limit (a copy at work): its bucket of 20 empties
    codes = [lookup(device, dev.device_id, key).status_code for _ in range(24)]
    assert codes == [200] * 19 + [429] * 5
    r = lookup(device, dev.device_id, key)
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 2
    limited = [e for e in cloud.admin.audit(device_id=dev.device_id) if e["outcome"] == "rate-limited"]
    assert len(limited) == 1 and limited[0]["source"] == DEVICE_SRC  # once a minute, the rest counted
    assert counted(cloud)["lookup/device-rate-limited"] == 5
    clock[0] += 2
    assert lookup(device, dev.device_id, key).status_code == 200
    # a copy of the key signing from another address (a copied SD card) empties its own bucket:
    # the device's own lookups still pass
    clock[0] += 60
    codes = [lookup(laptop, dev.device_id, key).status_code for _ in range(24)]
    assert codes == [200] * 20 + [429] * 4
    assert lookup(device, dev.device_id, key).status_code == 200
    limited = [e for e in cloud.admin.audit(device_id=dev.device_id) if e["outcome"] == "rate-limited"]
    assert [e["source"] for e in limited] == [DEVICE_SRC, "203.0.113.77"]  # the copy's address audited
    # a throttled request spent no nonce and wrote no lookup record
    lookups = [e["outcome"] for e in cloud.admin.audit(device_id=dev.device_id, limit=1000) if e["action"] == "lookup"]
    assert lookups == (["granted"] * (1 + 60 + 1) + ["replay"] * 10 + ["granted"] * 19 + ["rate-limited", "granted"]
                       + ["granted"] * 20 + ["rate-limited", "granted"])

    # enrolment: 10 a minute per source
    codes = [other.post("/v1/enrol", json={"token": f"t{i}", "public_key": "x"}).status_code for i in range(12)]
    assert codes == [403] * 10 + [429] * 2
    assert (counted(cloud)["enrol/bad-public-key"], counted(cloud)["enrol/rate-limited"]) == (10, 2)
    for c in (attacker, device, other, laptop):
        c.close()


def test_limits_come_from_the_config_and_unknown_keys_are_refused(tmp_path, capsys):
    from cloud.cli import main
    from cloud.config import ConfigError, from_dict, load
    cfg = from_dict({"server": {"api_docs": True, "trusted_proxies": ["10.0.0.5"]},
                     "limits": {"device_per_min": 6, "device_burst": 2, "source_per_min": 0}})
    assert (cfg.server.api_docs, cfg.limits.device_per_min, cfg.limits.source_burst) == (True, 6.0, 40)
    for bad, message in (({"limits": {"device_per_minute": 6}}, "unknown key limits.device_per_minute"),
                         ({"server": {"docs": True}}, "unknown key server.docs"),
                         ({"logging": {}}, "unknown section [logging]"),
                         ({"server": {"api_docs": "yes"}}, "server.api_docs must be bool"),
                         ({"limits": {"device_burst": True}}, "limits.device_burst must be int"),
                         ({"limits": {"device_burst": 0}}, "limits.device_burst must be between"),
                         ({"server": {"trusted_proxies": ["lb.example"]}}, "is not an IP address")):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            from_dict(bad)
    path = tmp_path / "cloud.toml"
    path.write_text("[limits]\ndevice_per_min = 12\n")
    assert load(path).limits.device_per_min == 12.0 and load(None).server.api_docs is False
    assert main(["serve", "--config", str(path), "--dump-config"]) == 0
    dumped = json.loads(capsys.readouterr().out)
    assert dumped["limits"]["device_per_min"] == 12.0 and dumped["server"] == {"api_docs": False, "trusted_proxies": []}
    path.write_text("[limits]\nper_device = 12\n")
    assert main(["serve", "--config", str(path), "--dump-config"]) == 1
    assert "unknown key limits.per_device" in capsys.readouterr().err


# -- anomalies ----------------------------------------------------------------------------------

def test_a_device_seen_from_a_new_source_is_an_anomaly(cloud, capsys):
    dev = cloud.enrol()
    key = load_key(dev.key_path)
    home, laptop, third = at(cloud, DEVICE_SRC), at(cloud, OTHER_SRC), at(cloud, ATTACKER_SRC)
    assert lookup(home, dev.device_id, key).status_code == 200  # its first address: its own
    assert lookup(home, dev.device_id, key, "globex").status_code == 200
    # (the repeated lookups of one org are second sessions too: tests/cloud/test_device_sessions.py)
    anomalies = lambda: [(e["outcome"], e["org_id"], e["source"]) for e in cloud.admin.audit(device_id=dev.device_id)  # noqa: E731
                         if e["action"] == "anomaly" and e["outcome"] == "new-source"]
    assert anomalies() == []
    # requests that do not verify, or replay, from a third address are no sighting of the device
    r = lookup(third, dev.device_id, Ed25519PrivateKey.generate())
    headers = sign_headers(key, dev.device_id, "GET", "/v1/orgs/acme/profile", b"")
    assert lookup(home, dev.device_id, key).status_code == 200
    assert home.get("/v1/orgs/acme/profile", headers=headers).status_code == 200
    replayed = third.get("/v1/orgs/acme/profile", headers=headers)
    assert (r.status_code, replayed.status_code) == (401, 401) and anomalies() == []
    # the device's key at work from another address (a copied SD card): audited, with the address
    assert lookup(laptop, dev.device_id, key, "globex").status_code == 200
    assert anomalies() == [("new-source", "globex", OTHER_SRC)]
    assert lookup(laptop, dev.device_id, key).status_code == 200  # once per address
    assert lookup(third, dev.device_id, key, "initech").status_code == 403  # verified, refused: still a sighting
    assert anomalies() == [("new-source", "globex", OTHER_SRC), ("new-source", "initech", ATTACKER_SRC)]
    # card lookups are sightings too; a fresh process asks the database, not its memory
    from cloud.api import create_app
    fresh = TestClient(create_app(cloud.engine, cloud.keyring), client=("198.51.100.99", 1), base_url="http://testserver")
    path, body = "/v1/cards/lookup", b'{"card": "card-04c0ffee5a1e01"}'
    assert lookup(TestClient(fresh.app, client=(DEVICE_SRC, 1), base_url="http://testserver"),
                  dev.device_id, key).status_code == 200
    assert fresh.post(path, content=body, headers={**sign_headers(key, dev.device_id, "POST", path, body),
                                                   "Content-Type": "application/json"}).status_code == 403
    assert anomalies()[-1] == ("new-source", None, "198.51.100.99") and len(anomalies()) == 3
    rc, out = _cli(capsys, cloud, "audit", "--device", dev.device_id)
    assert rc == 0 and [ln for ln in out.splitlines() if "new-source" in ln and OTHER_SRC in ln and "anomaly" in ln]
    for c in (home, laptop, third, fresh):
        c.close()


# -- API docs -----------------------------------------------------------------------------------

def test_api_docs_only_when_configured(cloud):
    for path in ("/docs", "/redoc", "/openapi.json"):
        r = cloud.http.get(path)
        assert (r.status_code, r.json()) == (404, {"error": "not-found"}), path
    cloud.reconfigure({"server": {"api_docs": True}})
    assert cloud.http.get("/openapi.json").json()["paths"].keys() >= {"/v1/enrol", "/v1/cards/lookup"}
    assert cloud.http.get("/docs").status_code == 200 and cloud.http.get("/redoc").status_code == 200
    assert "429" in cloud.http.get("/openapi.json").json()["paths"]["/v1/orgs/{org_id}/profile"]["get"]["responses"]


# -- the public part is bound into the sealed part ----------------------------------------------

def _edit_public(cloud, org: str, edit) -> None:
    with cloud.engine.begin() as c:
        public = json.loads(c.execute(text("SELECT public_json FROM org_profile WHERE org_id = :o"), {"o": org}).scalar())
        edit(public)
        c.execute(text("UPDATE org_profile SET public_json = :p WHERE org_id = :o"), {"p": json.dumps(public), "o": org})


def test_an_edited_public_part_is_refused_and_audited(cloud):
    dev = cloud.enrol()
    client = cloud.client(dev)
    assert client.fetch_profile("acme").vpn.gateway == "10.78.0.11"
    for edit in (lambda p: p["vpn"].update(gateway="10.66.6.6"),           # redirect the device
                 lambda p: p["vpn"].update(remote_ts=["10.0.0.0/8"]),      # widen its selectors
                 lambda p: p["policy"].update(combined_mode=True),
                 lambda p: p["auth"].update(host="10.20.0.66")):
        cloud.admin.set_profile("acme", json.loads(json.dumps(cloud.profiles["acme"])))
        _edit_public(cloud, "acme", edit)
        r = lookup(cloud.http, dev.device_id, load_key(dev.key_path))
        assert (r.status_code, r.json()) == (503, {"error": "unavailable"}) and CANARY not in r.text
        assert [(e["org_id"], e["outcome"]) for e in cloud.admin.audit(device_id=dev.device_id)
                if e["action"] == "lookup"][-2:] == [("acme", "granted"), ("acme", "tampered")]  # entitled, nothing served
    # the same public part re-serialized (key order, spacing) is the same public part
    cloud.admin.set_profile("acme", json.loads(json.dumps(cloud.profiles["acme"])))
    with cloud.engine.begin() as c:
        public = json.loads(c.execute(text("SELECT public_json FROM org_profile WHERE org_id = 'acme'")).scalar())
        c.execute(text("UPDATE org_profile SET public_json = :p WHERE org_id = 'acme'"),
                  {"p": json.dumps(dict(reversed(list(public.items()))), indent=3)})
    assert client.fetch_profile("acme").vpn.gateway == "10.78.0.11"
    assert cloud.admin.show_org("acme")["profile"]["sealing"] == "bound"


def test_rows_sealed_the_old_way_are_refused_until_resealed(cloud, capsys):
    """A row as 0002 stored it (secrets sealed with the org id only, seal_version 1): lookups
    refuse it (`legacy-seal`), a key rotation keeps it readable, `reseal-profiles` binds it."""
    from cloud.crypto import Keyring
    from cloud.sealing import legacy_aad
    dev = cloud.enrol()
    ring = Keyring(cloud.kek_file)
    secret = json.dumps({"vpn.psk": cloud.profiles["acme"]["vpn"]["psk"],
                         "auth.secret": cloud.profiles["acme"]["auth"]["secret"]}).encode()
    old = ring.seal(secret, legacy_aad("acme"))
    with cloud.engine.begin() as c:
        c.execute(text("UPDATE org_profile SET kek_id = :k, wrapped_dek = :w, secrets_ct = :s, seal_version = 1 "
                       "WHERE org_id = 'acme'"), {"k": old.kek_id, "w": old.wrapped_dek, "s": old.ciphertext})
    r = lookup(cloud.http, dev.device_id, load_key(dev.key_path))
    assert r.status_code == 503 and cloud.admin.audit(device_id=dev.device_id)[-1]["outcome"] == "legacy-seal"
    assert cloud.admin.show_org("acme")["profile"]["sealing"] == "legacy" and cloud.admin.legacy_profiles() == 1
    assert cloud.admin.rotate_key(cloud.kek_file)["rewrapped"] == 3  # legacy and bound rows alike
    rc, out = _cli(capsys, cloud, "reseal-profiles")
    assert rc == 0 and "1 profiles re-sealed" in out
    assert cloud.admin.legacy_profiles() == 0
    assert cloud.client(dev).fetch_profile("acme").vpn.psk.reveal().decode() == cloud.profiles["acme"]["vpn"]["psk"]
    assert ("reseal-profile", "done") in [(e["action"], e["outcome"]) for e in cloud.admin.audit(org_id="acme")]
    assert _cli(capsys, cloud, "reseal-profiles")[1].startswith("0 profiles")
    # a tampered row stops a rotation with a message naming it (no material)
    _edit_public(cloud, "globex", lambda p: p["vpn"].update(gateway="10.66.6.6"))
    from cloud.admin import AdminError
    with pytest.raises(AdminError, match="org_profile globex does not open"):
        cloud.admin.rotate_key(cloud.kek_file)


def test_a_0002_database_upgrades_with_its_profiles_waiting_for_reseal(db_url, kek_file):
    """The migration path: a profile stored by 0002 is `seal_version` 1 after the upgrade (refused
    by lookups), `reseal-profiles` binds it; the audit log stays append-only with its new column."""
    from alembic import command
    from alembic.config import Config

    from cloud import profiles
    from cloud.admin import Admin
    from cloud.crypto import Keyring
    from cloud.sealing import legacy_aad
    from cloud.storage import HEAD, _MIGRATIONS, current_revision, migrate, open_engine
    from conftest import wire_profile
    engine = open_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        conn.commit()
    ring = Keyring(kek_file)
    public, secret = profiles.split(profiles.normalize(wire_profile("acme")))
    old = ring.seal(secret, legacy_aad("acme"))
    with engine.begin() as c:
        c.execute(text("INSERT INTO org (id, name, created_at) VALUES ('acme', 'acme', 0)"))
        c.execute(text("INSERT INTO org_profile (org_id, public_json, kek_id, wrapped_dek, secrets_ct, version, "
                       "updated_at) VALUES ('acme', :p, :k, :w, :s, 1, 0)"),
                  {"p": json.dumps(public), "k": old.kek_id, "w": old.wrapped_dek, "s": old.ciphertext})
    migrate(engine)
    assert current_revision(engine) == HEAD == "0005"
    admin = Admin(engine, ring)
    assert admin.legacy_profiles() == 1 and admin.show_org("acme")["profile"]["sealing"] == "legacy"
    assert admin.reseal_profiles() == {"resealed": 1}
    assert admin.show_org("acme")["profile"]["sealing"] == "bound"
    with pytest.raises(Exception, match="append-only"):
        with engine.begin() as c:
            c.execute(text("DELETE FROM audit_event"))
    engine.dispose()


# -- the served process: config file, proxies ---------------------------------------------------

def test_served_workers_read_the_config_and_trust_only_configured_proxies(kek_file, tmp_path):
    """`tenantprint cloud serve --config`: the workers serve no docs by default, and take the client
    address from X-Forwarded-For only when the peer is a configured trusted proxy."""
    from conftest import Cloud
    db = f"sqlite:///{tmp_path / 'cloud.db'}"
    seeded = Cloud(db, kek_file, tmp_path / "keys")
    dev = seeded.enrol()
    key = load_key(dev.key_path)
    servers = {}
    try:
        for name, proxies in (("untrusted", []), ("trusted", ["127.0.0.1"])):  # both start at once
            config = tmp_path / f"{name}.toml"
            config.write_text(f"[server]\ntrusted_proxies = {json.dumps(proxies)}\n")
            port, log = free_port(), open(tmp_path / f"{name}.log", "wb")
            servers[name] = (f"http://127.0.0.1:{port}", log, subprocess.Popen(
                [sys.executable, "-m", "tenantprint", "cloud", "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--config", str(config)],
                env={"PATH": os.environ["PATH"], "TP_CLOUD_DB": db, "TP_CLOUD_KEK_FILE": str(kek_file)},
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        results, path = {}, "/v1/orgs/acme/profile"
        for n, (name, (url, _log, proc)) in enumerate(servers.items(), 1):
            deadline = time.monotonic() + 20
            while True:
                try:
                    if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / f"{name}.log").read_text()
                time.sleep(0.1)
            with httpx.Client(base_url=url, timeout=5) as http:
                assert http.get("/openapi.json").status_code == 404
                r = http.get(path, headers={**sign_headers(key, dev.device_id, "GET", path, b""),
                                            "X-Forwarded-For": f"192.0.2.{n}"})
                results[name] = r.status_code
    finally:
        for _url, log, proc in servers.values():
            os.killpg(proc.pid, 15)  # our own children's sessions only
            proc.wait(15)
            log.close()
    assert results == {"untrusted": 200, "trusted": 200}
    with seeded.engine.connect() as c:
        sources = sorted(r[0] for r in c.execute(text("SELECT source FROM device_source")))
    assert sources == ["127.0.0.1", "192.0.2.2"]  # the untrusted peer's header was not read
    anomaly = [e for e in seeded.admin.audit(device_id=dev.device_id) if e["action"] == "anomaly"]
    # the second lookup of the one org is a second session too, from the address the header gave
    assert sorted((e["outcome"], e["source"]) for e in anomaly) == [("new-source", "192.0.2.2"),
                                                                     ("second-session", "192.0.2.2")]
    seeded.close()
