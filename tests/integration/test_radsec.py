"""RADIUS over TLS (RadSec, RFC 6614; issue 18) against a REAL FreeRADIUS: the org's server, configured
by org/radius_config.write_config_dir with a RadSec listener only (no UDP, no shared secret), asked by
the MFP's own client, hal.auth.radsec.RadsecAuthenticator, with its device certificate.

The PKI is made here: the coworking space's device CA (devices dev-1, dev-7 and dev-9; dev-7 revoked
on the CRL the server checks), the org's CA (the server's certificate for 127.0.0.1) and a stranger's
CA. The server runs on 127.0.0.1 and a free TCP port, reject_delay 0, and is stopped by its PID.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prereq import need, need_binary

from hal.auth import Accepted, PinRequired, Rejected, Unavailable, radsec
from hal.auth.radsec import RadsecAuthenticator
from hal.directory.profile import AuthServerProfile, SessionProfile
from org import card_sun
from org.card_sun import Card
from org.radius_config import (
    OrgRadius,
    RadiusUser,
    RadsecListener,
    render,
    write_config_dir,
)

FREERADIUS = "/usr/sbin/freeradius"
RLM_PYTHON3 = "/usr/lib/freeradius/rlm_python3.so"
READY = b"Ready to process requests"
START_TIMEOUT_S = 10.0
NOT_VERIFIED = "Card not verified"
NOW = datetime.datetime.now(datetime.timezone.utc)
HOUR = datetime.timedelta(hours=1)
ALICE_CARD = Card.new(bytes.fromhex("04A11CE0005EC1"))


def proof(card: Card, counter: int) -> str:
    msg = card_sun.message(card.uid, counter, card.k_meta_read, card.k_file_read)
    return msg.enc_picc_data + msg.mac


# -- the PKI --------------------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - HOUR).not_valid_after(NOW + 48 * HOUR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca, cn: str, san: x509.GeneralName, usage, *, start=-1, end=24):
    ca_key, ca_cert = ca
    # devices sign with Ed25519 (as their enrolment key), the server with ECDSA
    key = ed25519.Ed25519PrivateKey.generate() if usage == ExtendedKeyUsageOID.CLIENT_AUTH \
        else ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW + start * HOUR).not_valid_after(NOW + end * HOUR)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256() if isinstance(ca_key, ec.EllipticCurvePrivateKey) else None))
    return key, cert


def crl(ca, revoked: list[x509.Certificate]) -> x509.CertificateRevocationList:
    ca_key, ca_cert = ca
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
         .last_update(NOW - HOUR).next_update(NOW + 24 * HOUR))
    for c in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(c.serial_number)
                                      .revocation_date(NOW - HOUR).build())
    return b.sign(ca_key, hashes.SHA256())


def pem(obj) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def write_pair(d: Path, stem: str, key, cert) -> tuple[str, str]:
    (d / f"{stem}.pem").write_bytes(pem(cert))
    k = d / f"{stem}.key"
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    k.chmod(0o600)
    return str(d / f"{stem}.pem"), str(k)


def device(space, d: Path, stem: str, cn: str, **validity) -> tuple[str, str]:
    return write_pair(d, stem, *issue(space, cn, x509.DNSName(cn), ExtendedKeyUsageOID.CLIENT_AUTH, **validity))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("radsec-pki")
    space, org, stranger = make_ca("space-1 device CA"), make_ca("acme RADIUS CA"), make_ca("not the space")
    revoked_key, revoked = issue(space, "dev-7", x509.DNSName("dev-7"), ExtendedKeyUsageOID.CLIENT_AUTH)
    # the space CA and its CRL in one file: FreeRADIUS (OpenSSL) loads both from ca_file
    (d / "space-ca.pem").write_bytes(pem(space[1]) + pem(crl(space, [revoked])))
    return {
        "space_ca": str(d / "space-ca.pem"),
        "org_ca": pem(org[1]).decode(),
        "stranger_ca": pem(stranger[1]).decode(),
        "server": write_pair(d, "server", *issue(org, "radius.acme", x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                 ExtendedKeyUsageOID.SERVER_AUTH)),
        "dev-1": device(space, d, "dev-1", "dev-1"),
        "dev-9": device(space, d, "dev-9", "dev-9"),  # the space's, but not on the org's list
        "dev-7": write_pair(d, "dev-7", revoked_key, revoked),
        "expired": device(space, d, "expired", "dev-1", start=-48, end=-1),
        "stranger": device(stranger, d, "stranger", "dev-1"),  # the right name from the wrong CA
    }


# -- the server -----------------------------------------------------------------------------------

def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One FreeRADIUS in the foreground, its output in `log`; started and stopped by this test only."""

    def __init__(self, conf: Path, cfg: OrgRadius):
        self.conf, self.cfg = conf, cfg
        self.log = conf.parent / "freeradius.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        write_config_dir(self.cfg, self.conf)
        self.since = len(self.output())  # a restart: only this start's lines count
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([FREERADIUS, "-f", "-l", "stdout", "-d", str(self.conf)],
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        deadline = time.monotonic() + START_TIMEOUT_S
        while READY not in self.output()[self.since:]:
            if self.proc.poll() is not None:
                raise AssertionError(f"freeradius exited at start: {self.output()[-2000:]!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"freeradius not ready after {START_TIMEOUT_S:g} s")
            time.sleep(0.02)

    def output(self) -> bytes:
        return self.log.read_bytes() if self.log.exists() else b""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None


def org_radius(pki, radsec_port: int, **kw) -> OrgRadius:
    base = dict(
        org_id="acme", secret=b"", clients=("127.0.0.1/32",),
        users=(RadiusUser("alice", "card", card=ALICE_CARD), RadiusUser("bob", "pin", "2468")),
        listen_address="127.0.0.1", reject_delay_s=0,
        radsec=RadsecListener(certificate_file=pki["server"][0], private_key_file=pki["server"][1],
                              ca_file=pki["space_ca"], port=radsec_port, allowed_clients=("dev-1", "dev-7"),
                              check_crl=True),
        radsec_only=True)
    base.update(kw)
    return OrgRadius(**base)


@pytest.fixture(scope="module")
def server(pki, tmp_path_factory):
    need_binary(FREERADIUS)
    need(os.path.exists(RLM_PYTHON3), f"FreeRADIUS's rlm_python3 ({RLM_PYTHON3}, Debian freeradius-python3)")
    srv = Server(tmp_path_factory.mktemp("radsec") / "conf", org_radius(pki, free_tcp_port()))
    srv.start()
    yield srv
    srv.stop()


def client(pki, server, who: str = "dev-1", **profile) -> RadsecAuthenticator:
    prof = AuthServerProfile("radsec", "127.0.0.1", server.cfg.radsec.port, profile.pop("timeout_s", 1.0),
                             ca_pem=profile.pop("ca_pem", pki["org_ca"]), retries=1, **profile)
    cert, key = pki[who]
    return RadsecAuthenticator(prof, client_cert=cert, client_key=key, min_timeout_s=1.0)


# -- what an enrolled, listed device gets ---------------------------------------------------------

def test_a_card_only_user_with_a_fresh_proof_is_accepted(pki, server):
    auth = client(pki, server)
    fresh = proof(ALICE_CARD, 1)
    assert auth.authenticate("alice", "acme", proof=fresh) == Accepted("alice")
    assert auth.authenticate("alice", "acme", proof=fresh) == Rejected("alice", NOT_VERIFIED)  # replay
    assert auth.authenticate("alice", "acme") == Rejected("alice", NOT_VERIFIED)  # no proof
    assert auth.authenticate("alice", "acme", proof=proof(ALICE_CARD, 2)) == Accepted("alice")


def test_a_pin_user_is_asked_for_the_pin_then_accepted(pki, server):
    auth = client(pki, server)
    asked = auth.authenticate("bob", "acme")
    assert isinstance(asked, PinRequired) and asked.prompt == "Enter PIN"
    assert auth.authenticate("bob", "acme", pin="2468", state=asked.challenge) == Accepted("bob")
    asked = auth.authenticate("bob", "acme")
    assert auth.authenticate("bob", "acme", pin="1357", state=asked.challenge) == Rejected("bob", "Wrong PIN")
    assert b"2468" not in server.output() and b"1357" not in server.output()


def test_a_session_keeps_one_connection_and_many_sessions_are_not_capped(pki, server):
    """A session's authenticator opens its connection ahead (`warm`, when its tunnel is up) and
    keeps it for every tap; many sessions, each its own, pass FreeRADIUS's default cap of 16 per
    client (RADSEC_MAX_CONNECTIONS, a closed one counts for cleanup_delay)."""
    auth = client(pki, server)
    auth.warm()
    kept = auth._kept
    assert kept is not None
    n = 40
    t0 = time.monotonic()
    for _ in range(n):
        assert isinstance(auth.authenticate("bob", "acme"), PinRequired)
    per_call = (time.monotonic() - t0) / n
    print(f"radsec: {per_call * 1000:.2f} ms per exchange on the kept connection (loopback)")
    assert auth._kept is kept
    for _ in range(20):
        other = client(pki, server)
        assert isinstance(other.authenticate("bob", "acme"), PinRequired)
        other.close()
    auth.close()


def test_a_kept_connection_the_server_closed_is_opened_again(pki, server):
    """The server restarted (or ended the idle connection): the next tap connects anew, once."""
    auth = client(pki, server)
    auth.warm()
    server.stop()
    server.start()
    assert auth.authenticate("alice", "acme", proof=proof(ALICE_CARD, 40)) == Accepted("alice")
    auth.close()


# -- what is refused ------------------------------------------------------------------------------

@pytest.mark.parametrize("who", ["stranger", "expired", "dev-7"])
def test_a_device_certificate_the_space_ca_does_not_vouch_for_ends_in_the_handshake(pki, server, who):
    """Another CA's certificate (with the right name), an expired one, a revoked one."""
    t0 = time.monotonic()
    out = client(pki, server, who).authenticate("bob", "acme", pin="2468")
    assert isinstance(out, Unavailable), out
    assert time.monotonic() - t0 < 0.9  # refused at once, not a timeout
    assert "2468" not in out.reason


def test_no_client_certificate_ends_in_the_handshake(pki, server, monkeypatch):
    monkeypatch.setattr(radsec, "load_device_identity", lambda ctx, cert, key: None)
    out = client(pki, server).authenticate("bob", "acme")
    assert isinstance(out, Unavailable), out


def test_a_device_not_on_the_orgs_list_gets_no_answer(pki, server):
    out = client(pki, server, "dev-9").authenticate("alice", "acme", proof=proof(ALICE_CARD, 50))
    assert isinstance(out, Unavailable) and "no reply" in out.reason
    # the proof was never looked at: the same message is good for alice's own tap afterwards
    assert client(pki, server).authenticate("alice", "acme", proof=proof(ALICE_CARD, 50)) == Accepted("alice")


def test_a_server_the_device_does_not_trust(pki, server):
    out = client(pki, server, ca_pem=pki["stranger_ca"]).authenticate("bob", "acme", pin="2468")
    assert isinstance(out, Unavailable) and "does not verify" in out.reason
    out = client(pki, server, server_name="radius.acme").authenticate("bob", "acme", pin="2468")
    assert isinstance(out, Unavailable) and "does not verify" in out.reason  # its SAN is 127.0.0.1


# -- no secret anywhere ---------------------------------------------------------------------------

def test_the_radsec_only_config_holds_no_secret_but_radsec(server):
    text = "\n".join(p.read_text() for p in server.conf.iterdir() if p.is_file() and not p.name.endswith(".json"))
    secrets = re.findall(r"^\s*secret\s*=\s*(.*)$", text, re.M)
    assert secrets and set(secrets) == {"radsec"}
    assert "proto = udp" not in text and "proto = tls" in text and "require_client_cert = yes" in text


def test_the_radsec_profile_carries_no_secret(pki, server):
    wire = {"org_id": "acme", "ttl_s": 60,
            "vpn": {"gateway": "10.78.0.11", "port": 500, "local_id": "dev-1", "remote_id": "gw.acme",
                    "auth": "pubkey", "client_cert_pem": pki["org_ca"], "client_key_pem": "k",
                    "ca_cert_pem": pki["org_ca"], "ike_proposals": ["aes256gcm16-prfsha384-ecp384"],
                    "esp_proposals": ["aes256gcm16"], "remote_ts": ["10.20.0.0/24"], "dpd_delay_s": 1},
            "auth": {"kind": "radsec", "host": "127.0.0.1", "port": server.cfg.radsec.port, "ca_pem": pki["org_ca"],
                     "user_format": "{user}@{org}", "timeout_s": 1.0, "retries": 1},
            "policy": {"idle_timeout_s": 300, "max_hold_s": 3600, "combined_mode": False}}
    prof = SessionProfile.from_wire(wire)
    assert prof.auth.secrets() == []
    cert, key = pki["dev-1"]
    from hal.auth import open_authenticator
    auth = open_authenticator(prof.auth, client_cert=cert, client_key=key, min_timeout_s=1.0)
    assert isinstance(auth.authenticate("bob", "acme"), PinRequired)


def test_udp_and_radsec_side_by_side(pki, tmp_path):
    """The lab keeps its UDP listener beside RadSec: FreeRADIUS takes both in one config."""
    need_binary(FREERADIUS)
    secret = b"TPCANARY-radsec-udp-0123456789"
    cfg = org_radius(pki, free_tcp_port(), secret=secret, radsec_only=False, port=free_tcp_port())
    files = render(cfg, tmp_path / "both")
    assert files["clients.conf"].count(f"secret = '{secret.decode()}'") == 1
    assert "proto = udp" in files["radiusd.conf"] and "proto = tcp" in files["radiusd.conf"]
    d = write_config_dir(cfg, tmp_path / "both")
    proc = subprocess.run([FREERADIUS, "-C", "-l", "stdout", "-d", str(d)], capture_output=True, timeout=20)
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, out[-2000:]
    assert secret.decode() not in out
