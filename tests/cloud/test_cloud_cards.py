"""The space-level card directory on SQLite and PostgreSQL: `tenantprint cloud card add/remove/list`
and their refusals, no card id at rest nor in the audit log, the signed `POST /v1/cards/lookup`
and `DirectoryClient.card_org` in process, over TLS against `tenantprint cloud serve`, and from the
lab's MFP host against the lab's seeded cloud."""

from __future__ import annotations

import json
import os
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import inspect, text

from hal.directory import DirectoryMalformed, DirectoryRefused
from hal.directory.client import DirectoryClient, enrol, load_key
from hal.directory.signing import sign_headers
from test_cloud_lab import lab_cloud  # noqa: F401  (fixture: the lab's cloud, started and seeded)
from test_cloud_serve import served  # noqa: F401  (fixture: `tenantprint cloud serve` over TLS)

BOB = "card-04c0ffee5a1e01"
OTHER = "card-0123456789"  # a wedge reader's digits
UNKNOWN = "card-deadbeefcafe"
PATH = "/v1/cards/lookup"


@pytest.fixture
def carded(cloud):
    """The cloud fixture with bob's card registered to acme in space-1 and a device of space-1."""
    cloud.admin.add_card("space-1", "acme", BOB)
    return cloud, cloud.enrol()


def signed_post(cloud, device, body: bytes, *, key=None, sign_body: bytes | None = None):
    headers = sign_headers(key or load_key(device.key_path), device.device_id, "POST", PATH,
                           body if sign_body is None else sign_body)
    headers["Content-Type"] = "application/json"
    return cloud.http.post(PATH, content=body, headers=headers), headers


def card_body(card: str) -> bytes:
    return json.dumps({"card": card}).encode()


def card_events(cloud, device=None):
    return [(e["action"], e["outcome"], e["org_id"], e["card_ref"]) for e in cloud.admin.audit(device_id=device)
            if e["action"].startswith("card-")]


def raw_storage(cloud) -> bytes:
    """Every byte the database holds: the SQLite files, or every row of every table."""
    if cloud.db_url.startswith("sqlite"):
        path = cloud.db_url[len("sqlite:///"):]
        return b"".join(open(p, "rb").read() for p in (path, path + "-wal") if os.path.exists(p))
    out = []
    with cloud.engine.connect() as c:
        for table in inspect(c).get_table_names():
            for row in c.execute(text(f"SELECT * FROM {table}")):
                out.append(repr(tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)).encode())
    return b"\n".join(out)


def assert_no_card_id(data: bytes | str, *cards: str) -> None:
    data = data.encode() if isinstance(data, str) else data
    for card in cards:
        uid = card[len("card-"):]
        assert uid.encode() not in data and uid.upper().encode() not in data
        if len(uid) % 2 == 0:
            assert bytes.fromhex(uid) not in data


# -- admin ------------------------------------------------------------------------------------

def test_admin_adds_lists_and_removes_cards(cloud):
    added = cloud.admin.add_card("space-1", "acme", BOB)
    assert added["added"] and added["org_id"] == "acme" and len(added["card_ref"]) == 8
    int(added["card_ref"], 16)
    again = cloud.admin.add_card("space-1", "acme", BOB)  # the same card and org: nothing changes
    assert not again["added"] and again["card_ref"] == added["card_ref"]
    cloud.admin.add_card("space-1", "globex", OTHER)
    cloud.admin.add_card("space-2", "initech", BOB)  # another space: its own registration and hash
    rows = cloud.admin.list_cards()
    assert [(r["space_id"], r["org_id"]) for r in rows] == [("space-1", "acme"), ("space-1", "globex"),
                                                             ("space-2", "initech")]
    assert set(rows[0]) == {"space_id", "org_id", "card_ref", "added_at"}
    assert rows[0]["card_ref"] == added["card_ref"] != rows[2]["card_ref"]
    assert [r["org_id"] for r in cloud.admin.list_cards(space_id="space-1", org_id="globex")] == ["globex"]
    removed = cloud.admin.remove_card("space-1", BOB)
    assert removed == {"space_id": "space-1", "org_id": "acme", "card_ref": added["card_ref"]}
    assert [r["org_id"] for r in cloud.admin.list_cards(space_id="space-1")] == ["globex"]
    from cloud.admin import AdminError
    with pytest.raises(AdminError, match="no such card"):
        cloud.admin.remove_card("space-1", BOB)
    with pytest.raises(AdminError, match="no such card"):
        cloud.admin.remove_card("space-9", BOB)  # a space without any card key
    events = card_events(cloud)
    assert events == [("card-add", "done", "acme", added["card_ref"]), ("card-add", "done", "globex", rows[1]["card_ref"]),
                      ("card-add", "done", "initech", rows[2]["card_ref"]),
                      ("card-remove", "done", "acme", added["card_ref"])]


def test_admin_refusals(cloud):
    from cloud.admin import AdminError
    cloud.admin.add_card("space-1", "acme", BOB)
    with pytest.raises(AdminError, match="registered to another org") as err:
        cloud.admin.add_card("space-1", "globex", BOB)  # one org per card and space
    assert BOB not in str(err.value)
    with pytest.raises(AdminError, match="no active contract"):
        cloud.admin.add_card("space-1", "initech", OTHER)  # initech's contract is with space-2
    cloud.admin.end_contract("globex", "space-1")
    with pytest.raises(AdminError, match="no active contract"):
        cloud.admin.add_card("space-1", "globex", OTHER)
    with pytest.raises(AdminError, match="no org"):
        cloud.admin.add_card("space-1", "nobody", OTHER)
    with pytest.raises(AdminError, match="no space"):
        cloud.admin.add_card("space-9", "acme", OTHER)
    for bad in ("card-04C0FFEE", "card-abc", "card-" + "a" * 41, "04c0ffee5a1e01", "card-04c0ffee\n", "card-xyz1"):
        with pytest.raises(AdminError, match="card id must match") as err:
            cloud.admin.add_card("space-1", "acme", bad)
        assert bad not in str(err.value)
    assert [r["org_id"] for r in cloud.admin.list_cards()] == ["acme"]
    assert ("card-add", "refused-other-org", "globex") in [e[:3] for e in card_events(cloud)]


def test_card_ids_are_not_stored_or_audited(carded):
    cloud, dev = carded
    cloud.admin.add_card("space-1", "globex", OTHER)
    signed_post(cloud, dev, card_body(BOB))
    signed_post(cloud, dev, card_body(UNKNOWN))
    cloud.admin.remove_card("space-1", OTHER)
    raw = raw_storage(cloud)
    assert b"acme" in raw  # the dump does hold the rows
    assert_no_card_id(raw, BOB, OTHER, UNKNOWN)
    assert_no_card_id(json.dumps(cloud.admin.audit()), BOB, OTHER, UNKNOWN)
    with cloud.engine.connect() as c:
        hashes = [r[0] for r in c.execute(text("SELECT card_hash FROM cards"))]
    assert len(hashes) == 1 and len(hashes[0]) == 64


def test_cli_card_commands_never_print_the_card_id(cloud, capsys):
    from cloud.cli import main

    def cli(*args):
        rc = main(["--db", cloud.db_url, "--kek-file", str(cloud.kek_file), *args])
        out = capsys.readouterr()
        return rc, out.out + out.err

    rc, out = cli("card", "add", "--space", "space-1", "--org", "acme", "--card", BOB)
    assert rc == 0 and "registered to org acme" in out
    rc, out = cli("card", "add", "--space", "space-1", "--org", "globex", "--card", BOB)
    assert rc == 1 and "another org" in out
    rc, out = cli("card", "list", "--space", "space-1")
    assert rc == 0 and "CARD_REF" in out and "acme" in out
    rc, out = cli("card", "list", "--json")
    listed = json.loads(out)
    assert rc == 0 and listed[0]["org_id"] == "acme" and len(listed[0]["card_ref"]) == 8
    rc, out = cli("audit", "--json")
    assert rc == 0 and listed[0]["card_ref"] in out
    rc, out = cli("card", "remove", "--space", "space-1", "--card", BOB)
    assert rc == 0 and "removed" in out
    rc, out = cli("card", "add", "--space", "space-1", "--org", "acme", "--card", "card-NOPE")
    assert rc == 1 and "card id must match" in out
    rc, out = cli("card", "list")
    assert rc == 0 and len(out.strip().splitlines()) == 1  # the header only
    assert_no_card_id(capsys.readouterr().out, BOB)


# -- the lookup API ---------------------------------------------------------------------------

def test_signed_lookup_answers_the_org(carded):
    cloud, dev = carded
    r, _ = signed_post(cloud, dev, card_body(BOB))
    assert (r.status_code, r.json()) == (200, {"org_id": "acme"})
    assert r.headers["cache-control"] == "no-store"
    assert cloud.client(dev).card_org(BOB) == "acme"
    ref = cloud.admin.list_cards()[0]["card_ref"]
    assert card_events(cloud, dev.device_id)[-1] == ("card-lookup", "granted", "acme", ref)


def test_refusals_are_identical(carded):
    """An unknown card, a card of another space, a card whose org's contract ended, and a card
    registered while its org had a contract: all the same 403."""
    cloud, dev = carded
    cloud.admin.add_card("space-2", "initech", OTHER)
    cloud.admin.add_card("space-1", "globex", "card-0badc0de")
    cloud.admin.end_contract("globex", "space-1")
    answers = {}
    for card in (UNKNOWN, OTHER, "card-0badc0de"):
        r, _ = signed_post(cloud, dev, card_body(card))
        answers[card] = (r.status_code, r.content, sorted(k for k in r.headers if k != "content-length"))
    assert answers[UNKNOWN] == answers[OTHER] == answers["card-0badc0de"]
    assert answers[UNKNOWN][:2] == (403, b'{"error":"refused"}')
    with pytest.raises(DirectoryRefused) as err:
        cloud.client(dev).card_org(UNKNOWN)
    assert err.value.status == 403 and UNKNOWN[5:] not in str(err.value)
    outcomes = [(o, org) for _, o, org, _ in card_events(cloud, dev.device_id)]
    assert outcomes == [("unknown-card", None), ("unknown-card", None), ("no-contract", "globex"),
                        ("unknown-card", None)]


def test_a_space_without_cards_refuses(cloud):
    dev = cloud.enrol(device_id="mfp-1.space-2", space="space-2")
    r, _ = signed_post(cloud, dev, card_body(BOB))
    assert (r.status_code, r.json()) == (403, {"error": "refused"})
    assert card_events(cloud, dev.device_id) == [("card-lookup", "unknown-card", None, None)]


def test_unsigned_forged_replayed_and_revoked_lookups(carded):
    cloud, dev = carded
    body = card_body(BOB)
    assert cloud.http.post(PATH, content=body, headers={"Content-Type": "application/json"}).status_code == 401
    r, _ = signed_post(cloud, dev, body, key=Ed25519PrivateKey.generate())
    assert (r.status_code, r.json()) == (401, {"error": "unauthenticated"})
    r, _ = signed_post(cloud, dev, body, sign_body=card_body(UNKNOWN))  # body swapped after signing
    assert r.status_code == 401
    r1, headers = signed_post(cloud, dev, body)
    r2 = cloud.http.post(PATH, content=body, headers=headers)
    assert (r1.status_code, r2.status_code) == (200, 401)
    cloud.admin.revoke_device(dev.device_id)
    assert signed_post(cloud, dev, body)[0].status_code == 401
    with pytest.raises(DirectoryRefused) as err:
        cloud.client(dev).card_org(BOB)
    assert err.value.device_rejected
    outcomes = [e["outcome"] for e in cloud.admin.audit() if e["action"] == "card-lookup"]
    assert outcomes == ["granted", "replay", "revoked", "revoked"]  # what the device's own key signed
    cloud.app.state.directory.refusals.flush()  # the others prove no device: counted, not audited
    counted = {k: n for s in cloud.admin.refusal_counts() for k, n in s["reasons"].items()}
    assert counted == {"card-lookup/missing-headers": 1, "card-lookup/bad-signature": 2}


@pytest.mark.parametrize("body", [
    b'{"card": "card-04C0FFEE5A1E01"}', b'{"card": "card-04c0ffee5a1e01", "org": "acme"}', b'{"card": 4}',
    b'{"card": "card-abc"}', b'{"card": "card-04c0ffee5a1e01\\n"}', b'{"Card": "card-04c0ffee5a1e01"}',
    b'["card-04c0ffee5a1e01"]', b'{}', b'', b'{not json', b'"card-04c0ffee5a1e01"',
    json.dumps({"card": "card-" + "a" * 41}).encode()])
def test_malformed_bodies_get_422(carded, body):
    cloud, dev = carded
    r, _ = signed_post(cloud, dev, body)
    assert (r.status_code, r.json()) == (422, {"error": "malformed"})
    assert b"04c0ffee" not in r.content.lower()
    assert card_events(cloud, dev.device_id)[-1][:2] == ("card-lookup", "malformed")


def test_oversized_body_and_unavailable_database(carded):
    cloud, dev = carded
    r, _ = signed_post(cloud, dev, b'{"card": "' + b"a" * 20_000 + b'"}')
    assert (r.status_code, r.json()) == (413, {"error": "too-large"})
    with cloud.engine.begin() as c:  # a card key that no longer opens (DB surgery): 503, not a guess
        c.execute(text("UPDATE card_key SET key_ct = :x"), {"x": b"\0" * 60})
    r, _ = signed_post(cloud, dev, card_body(BOB))
    assert (r.status_code, r.json()) == (503, {"error": "unavailable"})


def test_key_rotation_keeps_cards_findable(carded):
    from cloud.crypto import kek_id, read_kek_file
    cloud, dev = carded
    cloud.admin.add_card("space-2", "initech", OTHER)
    client = cloud.client(dev)
    assert client.card_org(BOB) == "acme"  # the app caches the unsealed card key now
    out = cloud.admin.rotate_key(cloud.kek_file)
    assert out["card_keys_rewrapped"] == 2 and out["rewrapped"] == 3
    with cloud.engine.connect() as c:
        assert {r[0] for r in c.execute(text("SELECT kek_id FROM card_key"))} == {out["kek_id"]}
    assert [kek_id(k) for k in read_kek_file(cloud.kek_file)] == [out["kek_id"]]
    assert client.card_org(BOB) == "acme"
    from cloud.api import create_app
    from cloud.crypto import Keyring
    from fastapi.testclient import TestClient
    fresh = TestClient(create_app(cloud.engine, Keyring(cloud.kek_file)), base_url="http://testserver")
    with DirectoryClient("http://testserver", dev.device_id, dev.key_path, http=fresh) as c2:
        assert c2.card_org(BOB) == "acme"  # a process that only has the new KEK
    fresh.close()
    cloud.admin.add_card("space-1", "acme", BOB)  # still the same hash: already registered
    assert len(cloud.admin.list_cards(space_id="space-1")) == 1


def test_client_rejects_bad_card_ids_and_bad_answers(carded):
    import httpx
    cloud, dev = carded
    client = cloud.client(dev)
    for bad in ("card-04C0FFEE", "04c0ffee", "card-04c0ffee\n", None, "card-" + "1" * 41):
        with pytest.raises(DirectoryRefused) as err:
            client.card_org(bad)
        assert err.value.status == 403
    assert card_events(cloud, dev.device_id) == []  # refused before any request

    def answering(content: bytes, status: int = 200):
        http = httpx.Client(transport=httpx.MockTransport(lambda req: httpx.Response(status, content=content)))
        return DirectoryClient("http://testserver", dev.device_id, dev.key_path, http=http)

    for content in (b'{"org_id": "-bad"}', b'{"org_id": "acme", "x": 1}', b"[]", b"nope", b'{"org_id": 3}',
                    b"x" * 5000):
        with pytest.raises(DirectoryMalformed):
            answering(content).card_org(BOB)
    assert answering(b'{"org_id": "acme"}').card_org(BOB) == "acme"


# -- the schema -------------------------------------------------------------------------------

def test_an_0001_database_upgrades_keeping_its_data(db_url):
    from alembic import command
    from alembic.config import Config

    from cloud.storage import HEAD, _MIGRATIONS, current_revision, migrate, open_engine
    engine = open_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.commit()
    with engine.begin() as c:
        c.execute(text("INSERT INTO space (id, name, created_at) VALUES ('s', 's', 0)"))
        c.execute(text("INSERT INTO audit_event (at, action, outcome) VALUES (0, 'old', 'done')"))
    assert current_revision(engine) == "0001"
    migrate(engine)
    assert current_revision(engine) == HEAD == "0005"
    with engine.connect() as c:
        assert c.execute(text("SELECT id FROM space")).scalar() == "s"
        assert c.execute(text("SELECT card_ref FROM audit_event WHERE action = 'old'")).first() == (None,)
        assert {"cards", "card_key"} <= set(inspect(c).get_table_names())
    with pytest.raises(Exception, match="append-only"):  # the audit triggers survive the new column
        with engine.begin() as c:
            c.execute(text("DELETE FROM audit_event"))
    engine.dispose()


# -- over TLS and in the lab ------------------------------------------------------------------

def test_card_org_over_tls_against_the_served_directory(served, tmp_path):
    seeded, url, tls = served
    seeded.admin.add_card("space-1", "acme", BOB)
    token = seeded.admin.enrol_token("space-1", "mfp-1.space-1")["token"]
    dev = enrol(url, token, tmp_path / "device", ca_file=tls["ca"])
    with DirectoryClient(url, dev.device_id, dev.key_path, tls["ca"], timeout=5) as client:
        for _ in range(4):  # both workers
            assert client.card_org(BOB) == "acme"
        with pytest.raises(DirectoryRefused):
            client.card_org(UNKNOWN)
    assert [o for _, o, _, _ in card_events(seeded, dev.device_id)] == ["granted"] * 4 + ["unknown-card"]


PROBE = r"""
import json, sys
from hal.directory import DirectoryError
from hal.directory.client import DirectoryClient, enrol
url, token, key_dir, ca = sys.argv[1:5]
dev = enrol(url, token, key_dir, ca_file=ca)
out = {}
with DirectoryClient(url, dev.device_id, dev.key_path, ca) as client:
    for card in sys.argv[5:]:
        try:
            out[card] = client.card_org(card)
        except DirectoryError as exc:
            out[card] = type(exc).__name__ + str(getattr(exc, "status", ""))
print(json.dumps(out))
"""


def test_lab_cloud_serves_the_seeded_cards(lab, lab_cloud):  # noqa: F811
    from lab.cards import LAB_CARDS
    from lab.services import cloud as cloud_svc
    device_id = "mfp-cards.space-1"
    token = cloud_svc.enrol_token(lab, device_id)
    office = lab.host("office")
    res = office.run([sys.executable, "-c", PROBE, cloud_svc.url(lab), token, "/tmp/card-directory-key",
                      str(cloud_svc.ca_file(lab)), *LAB_CARDS, UNKNOWN], timeout=60)
    assert json.loads(res.stdout) == {**{c: org for c, (org, _) in LAB_CARDS.items()},
                                      UNKNOWN: "DirectoryRefused403"}
    listed = cloud_svc.run_cli(lab, ["card", "list", "--json"])
    assert listed.returncode == 0, listed.stderr
    assert sorted(r["org_id"] for r in json.loads(listed.stdout)) == sorted(org for org, _ in LAB_CARDS.values())
    cloud_svc.seed(lab, contracts=["acme"])  # idempotent: each card stays registered once
    assert len(json.loads(cloud_svc.run_cli(lab, ["card", "list", "--json"]).stdout)) == len(LAB_CARDS)
    events = json.loads(cloud_svc.run_cli(lab, ["audit", "--device", device_id, "--json"]).stdout)
    assert [e["outcome"] for e in events if e["action"] == "card-lookup"] == ["granted"] * len(LAB_CARDS) + ["unknown-card"]
    assert_no_card_id((lab.layout.logs_dir / "cloud.log").read_text(), *LAB_CARDS)
