"""Attacks of the issue 13 penetration test that already held: a spoofed originating host from the
coworking LAN, hostile NDEF images through the real reader path, and replayed cloud lookups.

None of these worked on the code before issue 13 either (the old session table already dropped
IPP from outside the tunnel and rp_filter was already on in the lab, the badge decoder was already
strict, the cloud already kept nonces); they are here so that the catalogue tries every attack of
the test, and so that a change that reopens one fails the suite.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from system import clean_system, lab_cli, system, wait_for  # noqa: E402,F401 (fixtures)

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from firmware.panel import MESSAGES  # noqa: E402
from hal.card.badge import MIME_TYPE, encode_badge, mime_record, ndef_file  # noqa: E402
from hal.directory.client import KEY_FILE, load_key  # noqa: E402
from hal.directory.signing import H_TIMESTAMP, sign_headers  # noqa: E402
from lab.orgs import DEVICE_ID  # noqa: E402

DOC = "/usr/share/cups/data/default-testpage.pdf"
MFP = "10.77.0.10"  # the MFP's office LAN address
DESK = "10.20.0.50"  # acme's desk and auth server, inside the tunnel's remote selectors


def _status():
    return lab_cli("status")


def _printed_count() -> int:
    return len(_status()["printed"])


# -- spoofed originating host -----------------------------------------------------------------

# A connection from a forged source; if it ever completed, a Print-Job "from the desk" would follow.
SPOOF = r"""
import socket, sys
sys.path.insert(0, sys.argv[4])
import ipp_client
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket()
s.settimeout(2.0)
s.bind((src, 0))
try:
    s.connect((dst, port))
except OSError as exc:
    print("blocked", type(exc).__name__); sys.exit(0)
body = ipp_client.encode(0x0002, f"ipp://{dst}:{port}/printers/tenantprint", "alice", None, 1, "spoofed")
s.sendall(b"POST /printers/tenantprint HTTP/1.1\r\nHost: %s\r\nContent-Type: application/ipp\r\n"
          b"Content-Length: %d\r\n\r\n" % (dst.encode(), len(body)) + body)
print("connected", s.recv(200)[:12])
"""


def _mfp_drops(system) -> int:
    """Packets the MFP refused before any socket saw them: the device firewall's and the sandboxes'
    table's drop counters (a packet to an address behind the MFP meets the sandboxes' forward chain
    first) and the kernel's reverse-path filter (a source that only the tunnel may carry, arriving on eth0)."""
    from hal.net.firewall import Firewall
    from hal.sandbox.forwarding import Forwarding

    office = system.host("office")
    fw = sum(n for name, n in Firewall("libipsec", netns=office.ns).counters().items() if name.startswith("drop-"))
    fw += sum(n for name, n in Forwarding(office.ns).counters().items() if name.startswith("drop-"))
    netstat = office.run(["cat", "/proc/net/netstat"]).stdout.decode().splitlines()
    names, values = [line.split() for line in netstat if line.startswith("TcpExt:")][:2]
    return fw + int(values[names.index("IPReversePathFilter")])


def _spoof(system, dst: str) -> str:
    proc = system.host("cowork").run([sys.executable, "-c", SPOOF, DESK, dst, "631", str(Path(__file__).parent)],
                                     timeout=30)
    return proc.stdout.decode().strip()


def test_spoofed_desk_source_from_the_coworking_lan_prints_nothing(clean_system):
    """Coworker on the office LAN sends IPP to the MFP from acme's desk address (10.20.0.50), idle and
    during acme's session, at its office address and its virtual IP: dropped, no job held, nothing printed."""
    system = clean_system
    cowork = system.host("cowork")
    mac = system.host("office").run(["cat", "/sys/class/net/eth0/address"]).stdout.decode().strip()
    before = _printed_count()
    # The forged source on cowork's own interface; the MFP's MAC pinned, since the MFP answers no
    # ARP request from an address its reverse path does not allow.
    cowork.run(["ip", "addr", "add", f"{DESK}/32", "dev", "eth0"])
    cowork.run(["ip", "neigh", "replace", MFP, "lladdr", mac, "dev", "eth0", "nud", "permanent"])
    vip = None
    try:
        drops = _mfp_drops(system)
        assert _spoof(system, MFP).startswith("blocked")
        assert _mfp_drops(system) > drops  # the SYNs reached the MFP and were dropped there

        st = lab_cli("tap", "--org", "acme", "--user", "alice")
        assert st["state"] == "ready", st
        vip = st["tunnel"]["virtual_ip"]
        cowork.run(["ip", "route", "replace", f"{vip}/32", "via", MFP])
        for dst in (vip, MFP):
            drops = _mfp_drops(system)
            assert _spoof(system, dst).startswith("blocked"), dst
            assert _mfp_drops(system) > drops, dst
        time.sleep(1)  # a job would be seen by the firmware's 50 ms poll long before this
        st = _status()
        assert st["firmware"]["held_jobs"] == [] and st["firmware"]["org"] == "acme"
        assert len(st["printed"]) == before
    finally:
        if vip:
            cowork.run(["ip", "route", "del", f"{vip}/32"], check=False)
        cowork.run(["ip", "neigh", "del", MFP, "dev", "eth0"], check=False)
        cowork.run(["ip", "addr", "del", f"{DESK}/32", "dev", "eth0"], check=False)


# -- hostile NDEF images ----------------------------------------------------------------------

UNREADABLE, UNSUPPORTED, UNKNOWN = (MESSAGES[k] for k in ("card-unreadable", "card-unsupported", "card-unknown"))
GOOD = b'{"v":1,"u":"alice","o":"acme"}'


def _rec(payload: bytes, mime: bytes = MIME_TYPE, **kw) -> bytes:
    return mime_record(mime, payload, **kw)


# name -> (NDEF message, panel line). Each is a variation of alice's acme badge.
HOSTILE_NDEF = {
    "empty message": (b"", UNKNOWN),
    "over 512 bytes": (_rec(GOOD + b" " * 600), UNREADABLE),
    "record claims 4 GiB": (bytes([0xC2, len(MIME_TYPE)]) + b"\xff\xff\xff\xf0" + MIME_TYPE + GOOD, UNREADABLE),
    "trailing bytes": (encode_badge("alice", "acme") + b"\xd2\x00\x00EVIL", UNREADABLE),
    "second record": (_rec(GOOD, me=False) + _rec(b'{"v":1,"u":"mallory","o":"acme"}', mb=False), UNREADABLE),
    "chunked record": (bytes([0xF2]) + _rec(GOOD)[1:], UNREADABLE),
    "wrong mime type": (_rec(GOOD, b"application/json"), UNKNOWN),
    "text record": (bytes([0xD1, 1, 3 + 10]) + b"T\x02en" + b"alice@acme", UNKNOWN),
    "extra json key": (_rec(b'{"v":1,"u":"alice","o":"acme","admin":true}'), UNREADABLE),
    "duplicate key": (_rec(b'{"v":1,"u":"mallory","u":"alice","o":"acme"}'), UNREADABLE),
    "user id with a path": (_rec(b'{"v":1,"u":"../../etc/passwd","o":"acme"}'), UNREADABLE),
    "user id with a quote": (_rec(b'{"v":1,"u":"alice\\"","o":"acme"}'), UNREADABLE),
    "user id with a NUL": (_rec(b'{"v":1,"u":"alice\\u0000","o":"acme"}'), UNREADABLE),
    "raw NUL in json": (_rec(b'{"v":1,"u":"alice\x00","o":"acme"}'), UNREADABLE),
    "deeply nested json": (_rec(b"[" * 220 + b"]" * 220), UNREADABLE),
    "nested version": (_rec(b'{"v":' + b"[" * 150 + b"1" + b"]" * 150 + b',"u":"alice","o":"acme"}'), UNSUPPORTED),
    "non-utf-8 bytes": (_rec(b'{"v":1,"u":"al\xffice","o":"acme"}'), UNREADABLE),
    "overlong utf-8": (_rec(b'{"v":1,"u":"\xc1\xa1lice","o":"acme"}'), UNREADABLE),
    "NaN constant": (_rec(b'{"v":NaN,"u":"alice","o":"acme"}'), UNREADABLE),
    "version 3": (_rec(b'{"v":3,"u":"alice","o":"acme"}'), UNSUPPORTED),
    "version 2 without its proof": (_rec(b'{"v":2,"u":"alice","o":"acme"}'), UNREADABLE),
    "version true": (_rec(b'{"v":true,"u":"alice","o":"acme"}'), UNSUPPORTED),
}


def _tap_ndef_file(system, image: bytes) -> dict:
    """A card whose NDEF file is `image` as is (NLEN included): what `lab tap` does, below the CLI,
    which always writes the true length."""
    from lab.services.firmware import firmware_status
    from lab.vcard import VirtualCard

    before = firmware_status(system)["taps"]
    card = VirtualCard(system)
    card.insert("04c0ffee00c0de", ndef_file=image)
    try:
        wait_for(lambda: firmware_status(system)["taps"] > before, 10, "the firmware to read the card")
    finally:
        card.remove()
    return system.service("firmware").wait_settled(system)


def _cloud_lookups(system) -> list[tuple]:
    from lab.services import cloud as cloud_svc

    out = cloud_svc.run_cli(system, ["audit", "--device", DEVICE_ID, "--json"])
    assert out.returncode == 0, out.stderr
    return [(e["id"], e["org_id"], e["outcome"]) for e in json.loads(out.stdout) if e["action"] == "lookup"]


def test_hostile_ndef_images_are_refused_at_the_reader(clean_system):
    """Anyone writes a hostile badge (huge lengths, extra records, wrong type, extra keys, path/quote/NUL
    ids, deep nesting, non-UTF-8) and taps it: the panel says the card is unreadable, unsupported or not
    registered, no lookup leaves the MFP, the daemon keeps running idle."""
    system = clean_system
    pid = system.procs.get("firmware").pid
    lookups = _cloud_lookups(system)
    wrong = []
    cases = [(name, ndef, panel) for name, (ndef, panel) in HOSTILE_NDEF.items()]
    # an NDEF file whose length field claims 65534 bytes in front of a real badge
    cases.append(("NLEN claims 65534 bytes", None, UNREADABLE))
    for name, ndef, panel in cases:
        taps = _status()["firmware"]["taps"]
        if ndef is None:
            st = _tap_ndef_file(system, b"\xff\xfe" + encode_badge("alice", "acme"))
        else:
            st = lab_cli("tap", "--org", "acme", "--user", "alice", "--ndef-hex", ndef.hex())
        seen = (st["state"], st["org"], st["tunnel"]["up"], st["panel"], st["taps"] - taps, st["audit"][-1]["event"])
        if seen != ("idle", None, False, panel, 1, "card-unreadable"):
            wrong.append((name, seen))
    assert not wrong, wrong
    st = _status()
    assert st["firmware"]["running"] and st["firmware"]["state"] == "idle"
    assert system.procs.get("firmware").pid == pid  # the same daemon: nothing crashed and came back
    assert _cloud_lookups(system) == lookups


def test_well_formed_badges_with_bogus_ids_release_nothing(clean_system):
    """A colleague writes badges naming a made-up org and another org's (unknown) user: the first gets
    a refused lookup, the second a session with globex but "Not authorized" at release; nothing prints."""
    system = clean_system
    before = _printed_count()
    st = lab_cli("tap", "--org", "nosuchorg", "--user", "alice", "--uid", "04c0ffee00c0de")
    assert st["state"] == "idle" and st["org"] is None and not st["tunnel"]["up"], st
    assert st["panel"] == MESSAGES["lookup-refused"]
    assert _cloud_lookups(system)[-1][1:] == ("nosuchorg", "refused")

    # a badge for a globex "mallory" (no such user there) may open globex's session: a tap identifies ...
    st = lab_cli("tap", "--org", "globex", "--user", "mallory", "--uid", "04c0ffee00c0de")
    assert st["state"] == "ready" and st["org"] == "globex", st
    wait_for(lambda: _status()["desks"]["globex"]["queue"], 20, "globex's desk queue")
    lab_cli("print", "--org", "globex", "--user", "grace", DOC)
    wait_for(lambda: [j["user"] for j in _status()["firmware"]["held_jobs"]] == ["grace"], 20, "grace's job held")
    # ... but only globex's directory says yes to a release: mallory gets nothing, grace's job stays
    st = lab_cli("tap", "--org", "globex", "--user", "mallory", "--uid", "04c0ffee00c0de")
    assert st["state"] == "ready" and st["panel"] == MESSAGES["not-authorized"], st
    time.sleep(1)
    st = _status()
    assert [j["user"] for j in st["firmware"]["held_jobs"]] == ["grace"]
    assert len(st["printed"]) == before


# -- cloud replays ----------------------------------------------------------------------------

# Sends captured lookups to the directory, each on its own connection; prints only the status codes
# (a 200 carries the org's secrets).
SEND = r"""
import http.client, json, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3])
codes = []
for req in json.load(sys.stdin):
    conn = http.client.HTTPSConnection(sys.argv[1], int(sys.argv[2]), context=ctx, timeout=10)
    conn.request("GET", req["path"], body=req["body"].encode() or None, headers=req["headers"])
    resp = conn.getresponse()
    resp.read()
    conn.close()
    codes.append(resp.status)
print(json.dumps(codes))
"""


def _lookup(org: str, key: Ed25519PrivateKey, *, now: float | None = None) -> dict:
    """A lookup request signed as the firmware's directory client signs it."""
    path = f"/v1/orgs/{org}/profile"
    return {"path": path, "body": "", "headers": sign_headers(key, DEVICE_ID, "GET", path, b"", now=now)}


def _send(system, host: str, requests: list[dict]) -> list[int]:
    from lab.services import cloud as cloud_svc

    proc = system.host(host).run([sys.executable, "-c", SEND, system.address("cloud"), str(cloud_svc.PORT),
                                  str(cloud_svc.ca_file(system))], input=json.dumps(requests).encode(), timeout=60)
    return json.loads(proc.stdout)


def test_captured_cloud_lookups_replayed_from_the_office_lan_are_refused(clean_system):
    """Attacker on the office LAN with a captured device-signed lookup replays it as is, stale, with its
    timestamp or body edited, for another org, and re-signed with its own key: every one refused (401), audited."""
    system = clean_system
    device_key = load_key(system.service("firmware").data_dir(system) / "state" / KEY_FILE)
    captured = _lookup("acme", device_key)
    old = _lookup("acme", device_key, now=time.time() - 600)  # an earlier capture, its window long past
    edited_ts = json.loads(json.dumps(old))
    edited_ts["headers"][H_TIMESTAMP] = str(int(time.time()))
    other_org = dict(captured, path="/v1/orgs/globex/profile")
    other_body = dict(captured, body='{"org":"globex"}')
    own_key = _lookup("acme", Ed25519PrivateKey.generate())

    seen = _cloud_lookups(system)
    refused_before = _bad_signatures(system)
    assert _send(system, "office", [captured]) == [200]  # the device's own request, once
    replays = [captured, old, edited_ts, other_org, other_body, own_key]
    assert _send(system, "cowork", replays) == [401] * len(replays)
    new = [(org, outcome) for i, org, outcome in _cloud_lookups(system) if i > max((s[0] for s in seen), default=0)]
    # the device signed the first two (audited in its name); the other four proved no device: they
    # are counted, never attributed to it (issue 18)
    assert new == [("acme", "granted"), ("acme", "replay"), ("acme", "stale")], new
    wait_for(lambda: _bad_signatures(system) - refused_before >= 4 or None, 10, "the refusals counted")


def _bad_signatures(system) -> int:
    from lab.services import cloud as cloud_svc

    out = cloud_svc.run_cli(system, ["audit", "--refusals", "--json"])
    assert out.returncode == 0, out.stderr
    return sum(n for s in json.loads(out.stdout) for what, n in s.get("reasons", {}).items()
               if what == "lookup/bad-signature")
