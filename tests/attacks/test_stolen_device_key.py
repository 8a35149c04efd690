"""A stolen SD card (issue 18): the device's keys and enrolment files, copied to the coworking
host, in the lab's default certificate mode.

The pen test's finding was that `device.key` alone fetched acme's and globex's PSK and RADIUS secret,
brought up acme's tunnel from a laptop and took the MFP's place. Now:
- a signed lookup with the copied key answers profiles that hold no secret of any org (no canary,
  not even of globex, whose users are in its LDAP directory: the device certificate binds there),
  and the cloud audits the lookups from a new address as an anomaly, and acme's (whose session the
  MFP holds) as a second session;
- the copied device key gets no certificate for a key of the thief's own (the device's first
  certificate pinned its key): no tunnel without the device's own IKE key, which a TPM would keep;
- with the device's IKE key and certificate copied too, a second IKE SA with the device's identity
  does not take over the MFP's: acme's gateway agent ends it, the MFP's session and its desk queue
  stay, a document printed at the desk still reaches the MFP, and the gateway's report of the
  duplicate is in the cloud's audit.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))

from system import clean_system, lab_cli, system, wait_for  # noqa: E402,F401 (fixtures)

from hal.directory.profile import SessionProfile  # noqa: E402
from hal.tunnel import TunnelConfig, TunnelSetupFailed, open_tunnel  # noqa: E402
from lab.orgs import DEVICE_ID, canaries  # noqa: E402
from lab.services.charon import VICI, MfpCharonService  # noqa: E402

ROOT = str(Path(__file__).resolve().parents[2])
DOC = "/usr/share/cups/data/default-testpage.pdf"

# On the coworking host, with the copied files: signed lookups for acme and globex, and a certificate
# request for a key of the thief's own; prints the status codes and bodies.
THIEF = r"""
import http.client, json, ssl, sys
sys.path.insert(0, sys.argv[1])
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hal.directory.client import load_key
from hal.directory.signing import sign_headers
host, port, cafile, key_file, device = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
key = load_key(key_file)
def call(method, path, body=b""):
    conn = http.client.HTTPSConnection(host, port, context=ssl.create_default_context(cafile=cafile), timeout=10)
    headers = sign_headers(key, device, method, path, body)
    if body:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=body or None, headers=headers)
    r = conn.getresponse()
    return [r.status, r.read().decode(errors="replace")]
out = {org: call("GET", f"/v1/orgs/{org}/profile") for org in ("acme", "globex")}
own = ec.generate_private_key(ec.SECP256R1())
csr = (x509.CertificateSigningRequestBuilder()
       .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)])).sign(own, hashes.SHA256()))
out["certificate"] = call("POST", "/v1/device/certificate",
                          json.dumps({"csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode()}).encode())
print(json.dumps(out))
"""


class ThiefCharon(MfpCharonService):
    name = "thief-charon"
    host_name = "cowork"


def _audit(system) -> list[tuple[str, str]]:
    from lab.services import cloud as cloud_svc

    out = cloud_svc.run_cli(system, ["audit", "--device", DEVICE_ID, "--json"])
    assert out.returncode == 0, out.stderr
    return [(e["action"], e["outcome"]) for e in json.loads(out.stdout)]


def _established(system) -> list[str]:
    out = system.host("gw-acme").run(["swanctl", "--list-sas", "--uri", f"unix://{VICI}"]).stdout.decode()
    hosts, up = [], False
    for line in out.splitlines():
        if not line.startswith(" "):
            up = ", ESTABLISHED," in line
        elif up and line.strip().startswith("remote "):
            hosts.append(line.split("@")[1].split("[")[0].strip())
            up = False
    return sorted(hosts)


def test_a_copied_device_key_fetches_no_secret_gets_no_certificate_and_takes_over_no_tunnel(clean_system):
    system = clean_system
    from lab.services import cloud as cloud_svc

    state = system.service("firmware").data_dir(system) / "state"
    loot = system.host("cowork").path("/tmp/loot")
    loot.mkdir(parents=True, exist_ok=True)
    for name in ("device.key", "device.json", "enrolment.json", "ike.key", "device-cert.pem"):
        if (state / name).exists():
            shutil.copy2(state / name, loot / name)
    assert (loot / "ike.key").exists() and (loot / "device-cert.pem").exists()

    # 1. lookups with the copied key, from the coworking host: answered, but nothing secret in them
    st = lab_cli("tap", "--org", "acme", "--user", "carol")  # the real MFP's acme session
    assert st["state"] == "ready" and st["org"] == "acme"
    before = len(_audit(system))
    proc = system.host("cowork").run([sys.executable, "-c", THIEF, ROOT, system.address("cloud"), str(cloud_svc.PORT),
                                      str(cloud_svc.ca_file(system)), "/tmp/loot/device.key", DEVICE_ID], timeout=60)
    got = json.loads(proc.stdout)
    assert got["acme"][0] == 200 and got["globex"][0] == 200
    for org in ("acme", "globex"):
        found = [c for c in canaries(system) if c in got[org][1]]
        wire = json.loads(got[org][1])
        assert wire["vpn"]["auth"] == "device" and "psk" not in wire["vpn"] and "secret" not in wire["auth"]
        assert "bind_password" not in wire["auth"] and found == [], f"a secret in {org}'s answer"
    assert json.loads(got["acme"][1])["auth"]["kind"] == "radsec"
    # this lab's globex checks its users with its slapd: the device certificate binds (SASL EXTERNAL)
    assert json.loads(got["globex"][1])["auth"]["kind"] == "ldap"
    # 2. no certificate for a key of the thief's own
    assert got["certificate"][0] == 403
    new = _audit(system)[before:]
    assert ("anomaly", "new-source") in new and ("anomaly", "ike-key-changed") in new, new
    # acme's lookup while the MFP's own acme session is open: a second session with one device
    # identity (cloud/sessions.py); globex's is not (the MFP has none open with globex)
    out = cloud_svc.run_cli(system, ["audit", "--device", DEVICE_ID, "--json"])
    second = {e["org_id"] for e in json.loads(out.stdout)
              if e["outcome"] == "second-session" and e["source"] == "10.77.0.20"}
    assert second == {"acme"}, second

    # 3. the device's IKE key and certificate copied too (no TPM): the thief's SA is ended, the MFP's stays
    wait_for(lambda: lab_cli("status")["desks"]["acme"]["queue"], 20, "acme's desk queue")
    assert _established(system) == ["10.77.0.10"]
    thief_charon = ThiefCharon()
    thief_charon.start(system)
    try:
        tun = open_tunnel(TunnelConfig(vici_socket=str(thief_charon.vici_socket(system)),
                                       netns=system.host("cowork").ns, device_cert=str(loot / "device-cert.pem"),
                                       device_key=str(loot / "ike.key")))
        try:
            try:
                tun.up(SessionProfile.from_wire(json.loads(got["acme"][1])), timeout=10)
            except TunnelSetupFailed:
                pass  # ended before its virtual IP came up
            wait_for(lambda: _established(system) == ["10.77.0.10"], 15, "only the MFP's SA at acme's gateway")
        finally:
            tun.purge()
    finally:
        thief_charon.stop(system)
    log = (system.layout.logs_dir / "gateway-agent-acme.log").read_text()
    assert "duplicate IKE SA for MFP mfp-1.space-1 from 10.77.0.20" in log
    # ... and the cloud's audit shows it, reported by acme's gateway (signed with its key) with the
    # thief's address as the source
    # (reported once the MFP's SA still lives 8 s after it: the lab's dead-peer detection takes ~4 s)
    wait_for(lambda: ("anomaly", "duplicate-ike-sa") in _audit(system), 30, "the duplicate in the cloud's audit")
    out = cloud_svc.run_cli(system, ["audit", "--device", DEVICE_ID, "--json"])
    dup = [e for e in json.loads(out.stdout) if e["outcome"] == "duplicate-ike-sa" and e["source"] == "10.77.0.20"]
    assert {e["org_id"] for e in dup} == {"acme"}, dup
    st = lab_cli("status")
    assert st["firmware"]["sessions"]["acme"]["tunnel"]["up"] is True
    # acme's desk still prints to the MFP: the job is held there, alice's real card releases it
    before_printed = len(st["printed"])
    lab_cli("print", "--org", "acme", "--user", "alice", "--from", "desk", DOC)
    wait_for(lambda: [j["user"] for j in lab_cli("status")["firmware"]["held_jobs"]] == ["alice"], 30,
             "alice's job held at the MFP")
    lab_cli("tap", "--org", "acme", "--user", "alice")
    wait_for(lambda: [p["user"] for p in lab_cli("status")["printed"][before_printed:]] == ["alice"], 30,
             "alice's document")
