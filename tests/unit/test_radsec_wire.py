"""hal/auth/radsec.py on the wire, against a scripted RadSec peer on 127.0.0.1 (Python's ssl).

The peer requires a client certificate of a test "space CA", decodes each request with pyrad under
RFC 6614's secret "radsec" and answers as told: properly, split into pieces, signed with another
secret, with a bad length, not at all, or by closing. It proves the framing (a packet is as long as
its Length field, wherever TLS records end), what we send (the same attributes as over UDP, the PIN
hidden, the State echoed, the card proof), and that nothing the peer does makes an answer out of a
reply that does not verify. The profile's radsec kind (no secret) is checked here too.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyrad import packet

from hal.auth import (
    Accepted,
    AuthConfigError,
    PinRequired,
    Rejected,
    Unavailable,
    open_authenticator,
)
from hal.auth.radius import dictionary
from hal.auth.radsec import RADSEC_SECRET, RadsecAuthenticator, read_packet
from hal.directory.profile import AuthServerProfile, ProfileError, SessionProfile

PROOF = "0123456789ABCDEF" * 3
NOW = datetime.datetime.now(datetime.timezone.utc)


# -- a small PKI ----------------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(hours=1)).not_valid_after(NOW + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca, cn: str, san: x509.GeneralName, usage, key=None):
    ca_key, ca_cert = ca
    key = key or ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(hours=1)).not_valid_after(NOW + datetime.timedelta(hours=24))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def pem(cert) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def write_pair(dirpath, stem: str, key, cert) -> tuple[str, str]:
    c, k = dirpath / f"{stem}.pem", dirpath / f"{stem}.key"
    c.write_text(pem(cert))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    k.chmod(0o600)
    return str(c), str(k)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("radsec-pki")
    space, org = make_ca("space-1 device CA"), make_ca("acme RADIUS CA")
    server = write_pair(d, "server", *issue(org, "radius.acme", x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                            ExtendedKeyUsageOID.SERVER_AUTH))
    # the device key is Ed25519, as the device's enrolment key is
    device = write_pair(d, "dev-1", *issue(space, "dev-1", x509.DNSName("dev-1"), ExtendedKeyUsageOID.CLIENT_AUTH,
                                           key=ed25519.Ed25519PrivateKey.generate()))
    (d / "space-ca.pem").write_text(pem(space[1]))
    return {"dir": d, "space_ca": str(d / "space-ca.pem"), "org_ca": pem(org[1]), "server": server,
            "device": device, "other_ca": pem(make_ca("someone else")[1])}


# -- the scripted peer ----------------------------------------------------------------------------

class Peer:
    """A RadSec server that answers each request with `self.script(request) -> bytes | None`
    (the raw bytes to write, in pieces when a list; None: say nothing; b"": close)."""

    def __init__(self, pki):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(*pki["server"])
        self.ctx.load_verify_locations(pki["space_ca"])
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.requests: list[tuple[packet.AuthPacket, bytes]] = []
        self.connections = 0
        self.client_cns: list[str] = []
        self.script = lambda req: reply(req, packet.AccessAccept)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            try:
                conn.settimeout(3)
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    subject = dict(x[0] for x in tls.getpeercert()["subject"])
                    self.client_cns.append(subject.get("commonName", ""))
                    raw = read_packet(tls, time.monotonic() + 3)
                    req = packet.AuthPacket(packet=raw, secret=RADSEC_SECRET, dict=dictionary())
                    self.requests.append((req, raw))
                    answer = self.script(req)
                    if answer is None:
                        self._stop.wait(3)
                        continue
                    for piece in answer if isinstance(answer, list) else [answer]:
                        tls.sendall(piece)
                        time.sleep(0.02)
            except (OSError, EOFError, ValueError):
                pass
            finally:
                conn.close()

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def reply(req: packet.AuthPacket, code: int, secret: bytes = RADSEC_SECRET, **attrs) -> bytes:
    rep = req.CreateReply()
    rep.code = code
    rep.secret = secret
    for k, v in attrs.items():
        rep[k.replace("_", "-")] = v
    return rep.ReplyPacket()


@pytest.fixture
def peer(pki):
    p = Peer(pki)
    yield p
    p.close()


def profile(port: int, ca_pem: str, **kw) -> AuthServerProfile:
    return AuthServerProfile(kind="radsec", host="127.0.0.1", port=port, timeout_s=kw.pop("timeout_s", 0.5),
                             ca_pem=ca_pem, retries=kw.pop("retries", 2), **kw)


def authenticator(pki, port: int, **kw) -> RadsecAuthenticator:
    cert, key = kw.pop("device", pki["device"])
    return RadsecAuthenticator(profile(port, kw.pop("ca_pem", pki["org_ca"]), **kw),
                               client_cert=cert, client_key=key, min_timeout_s=0.1)


# -- what goes over the wire ----------------------------------------------------------------------

def test_request_carries_name_ma_hidden_pin_state_and_proof(pki, peer):
    peer.script = lambda req: reply(req, packet.AccessChallenge, State=b"S" * 16, Reply_Message="Enter PIN")
    auth = authenticator(pki, peer.port)
    first = auth.authenticate("bob", "acme", proof=PROOF)
    assert isinstance(first, PinRequired) and first.challenge == b"S" * 16 and first.prompt == "Enter PIN"
    peer.script = lambda req: reply(req, packet.AccessAccept)
    assert auth.authenticate("bob", "acme", "2468", first.challenge) == Accepted("bob")
    (r1, _), (r2, raw2) = peer.requests
    assert r1["User-Name"] == ["bob@acme"] and r1["NAS-Identifier"] == ["tenantprint"]
    assert r1["TP-Card-SUN"] == [PROOF] and "TP-Card-SUN" not in r2
    assert "User-Password" not in r1 and "State" not in r1
    assert r1.message_authenticator and r1.verify_message_authenticator(secret=RADSEC_SECRET)
    assert r2.verify_message_authenticator(secret=RADSEC_SECRET)
    assert r2["State"] == [b"S" * 16]
    assert r2.PwDecrypt(r2["User-Password"][0]) == "2468"
    assert b"2468" not in raw2
    assert peer.client_cns == ["dev-1", "dev-1"]  # the device's certificate, one connection per call


def test_a_reply_in_pieces_is_one_packet(pki, peer):
    def in_pieces(req):
        raw = reply(req, packet.AccessReject, Reply_Message="Wrong PIN")
        return [raw[:2], raw[2:7], raw[7:]]
    peer.script = in_pieces
    assert authenticator(pki, peer.port).authenticate("bob", "acme", "1111") == Rejected("bob", "Wrong PIN")


def test_a_card_accept_names_its_owner(pki, peer):
    peer.script = lambda req: reply(req, packet.AccessAccept, User_Name="alice@acme")
    assert authenticator(pki, peer.port).authenticate("card-04a1", "acme") == Accepted("card-04a1", "alice")


# -- replies that are not answers ----------------------------------------------------------------

@pytest.mark.parametrize("script, why", [
    (lambda req: reply(req, packet.AccessAccept, secret=b"not-radsec"), "does not verify"),
    (lambda req: b"\x02\x01\x13\x88" + b"\0" * 16, "length"),  # 5000 octets: no RADIUS packet
    (lambda req: b"\x02\x01\x00\x0a" + b"\0" * 16, "length"),
    (lambda req: reply(req, packet.AccessAccept)[:12], "closed"),  # ends inside the packet
    (lambda req: b"", "closed"),
])
def test_bad_replies_are_unavailable(pki, peer, script, why):
    peer.script = script
    out = authenticator(pki, peer.port).authenticate("bob", "acme", "2468")
    assert isinstance(out, Unavailable) and why in out.reason
    assert "2468" not in out.reason


def test_a_silent_server_is_not_asked_twice(pki, peer):
    peer.script = lambda req: None
    auth = authenticator(pki, peer.port, timeout_s=0.4, retries=3)
    t0 = time.monotonic()
    out = auth.authenticate("alice", "acme", proof=PROOF)
    took = time.monotonic() - t0
    assert isinstance(out, Unavailable) and "no reply" in out.reason
    assert 0.35 < took < auth.deadline_s + 0.2
    # sent once: a card proof sent again on a new connection would be a replay
    assert peer.connections == 1 and len(peer.requests) == 1


def test_a_closed_port_is_tried_retries_times_within_the_deadline(pki):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        auth = authenticator(pki, port, retries=3)
        t0 = time.monotonic()
        out = auth.authenticate("bob", "acme")
        assert time.monotonic() - t0 < auth.deadline_s
    assert isinstance(out, Unavailable) and "cannot reach" in out.reason


def test_a_server_the_profile_does_not_trust(pki, peer):
    out = authenticator(pki, peer.port, ca_pem=pki["other_ca"]).authenticate("bob", "acme", "2468")
    assert isinstance(out, Unavailable) and "does not verify" in out.reason
    assert peer.requests == []
    # the right CA, the wrong name: the certificate is for 127.0.0.1, not radius.acme
    out = authenticator(pki, peer.port, server_name="radius.acme").authenticate("bob", "acme", "2468")
    assert isinstance(out, Unavailable) and "does not verify" in out.reason
    assert peer.requests == []


def test_a_device_certificate_the_server_does_not_take(pki, peer, tmp_path):
    stranger = write_pair(tmp_path, "stranger", *issue(make_ca("elsewhere"), "dev-1", x509.DNSName("dev-1"),
                                                       ExtendedKeyUsageOID.CLIENT_AUTH))
    out = authenticator(pki, peer.port, device=stranger).authenticate("bob", "acme")
    assert isinstance(out, Unavailable), out
    assert peer.requests == []


# -- framing alone --------------------------------------------------------------------------------

class Chunks:
    def __init__(self, *chunks: bytes):
        self.chunks = list(chunks)

    def settimeout(self, _):
        pass

    def recv(self, n: int) -> bytes:
        if not self.chunks:
            return b""
        head, self.chunks[0] = self.chunks[0][:n], self.chunks[0][n:]
        if not self.chunks[0]:
            self.chunks.pop(0)
        return head


def test_read_packet_takes_exactly_one_packet():
    one = b"\x02\x07\x00\x16" + b"A" * 16 + b"\x12\x02"
    stream = Chunks(one[:3], one[3:] + b"\x03\x08")  # the next packet's start stays unread
    assert read_packet(stream, time.monotonic() + 1) == one
    assert stream.chunks == [b"\x03\x08"]
    with pytest.raises(EOFError):
        read_packet(Chunks(one[:10]), time.monotonic() + 1)
    with pytest.raises(ValueError):
        read_packet(Chunks(b"\x02\x07\x00\x13" + b"A" * 16), time.monotonic() + 1)
    with pytest.raises(TimeoutError):
        read_packet(Chunks(one), time.monotonic() - 1)


# -- the profile and the factory ------------------------------------------------------------------

def wire(ca: str, **auth) -> dict:
    base = {"kind": "radsec", "host": "10.20.0.50", "ca_pem": ca, "user_format": "{user}@{org}",
            "timeout_s": 3.0, "retries": 2}
    base.update(auth)
    return {"org_id": "acme", "ttl_s": 300,
            "vpn": {"gateway": "10.78.0.11", "port": 500, "local_id": "mfp-1", "remote_id": "gw.acme",
                    "auth": "psk", "psk": "x" * 16, "ike_proposals": ["aes256gcm16-prfsha384-ecp384"],
                    "esp_proposals": ["aes256gcm16"], "remote_ts": ["10.20.0.0/24"], "dpd_delay_s": 1},
            "auth": base,
            "policy": {"idle_timeout_s": 300, "max_hold_s": 3600, "combined_mode": False}}


def test_profile_radsec_holds_no_secret(pki):
    prof = SessionProfile.from_wire(wire(pki["org_ca"]))
    assert prof.auth.kind == "radsec" and prof.auth.port == 2083 and prof.auth.server_name is None
    assert prof.auth.secrets() == [] and prof.auth.secret is None
    out = prof.to_wire()["auth"]
    assert "secret" not in out and out["port"] == 2083 and "server_name" not in out
    assert SessionProfile.from_wire(prof.to_wire()).auth == prof.auth
    named = SessionProfile.from_wire(wire(pki["org_ca"], port=12083, server_name="radius.acme"))
    assert named.auth.server_name == "radius.acme" and named.to_wire()["auth"]["server_name"] == "radius.acme"


@pytest.mark.parametrize("change, field", [
    (dict(secret="a-shared-secret"), "unknown keys"),  # no secret reaches the device
    (dict(ca_pem=None), "ca_pem"),
    (dict(ca_pem="not a pem"), "ca_pem"),
    (dict(port=0), "port"),
    (dict(user_format="{nobody}"), "user_format"),
    (dict(server_name="bad name!"), "server_name"),
    (dict(bind_password="x"), "unknown keys"),
])
def test_profile_radsec_refusals(pki, change, field):
    w = wire(pki["org_ca"], **change)
    if change.get("ca_pem", "") is None:
        del w["auth"]["ca_pem"]
    with pytest.raises(ProfileError) as err:
        SessionProfile.from_wire(w)
    assert field in str(err.value) and "a-shared-secret" not in str(err.value)


def test_open_authenticator_picks_radsec(pki, tmp_path):
    auth = open_authenticator(profile(2083, pki["org_ca"]), client_cert=pki["device"][0], client_key=pki["device"][1])
    assert isinstance(auth, RadsecAuthenticator)
    with pytest.raises(AuthConfigError):
        open_authenticator(profile(2083, pki["org_ca"]))  # no device files
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("-----BEGIN PRIVATE KEY-----\nTPCANARYnotakey\n-----END PRIVATE KEY-----\n")
    with pytest.raises(AuthConfigError) as err:
        RadsecAuthenticator(profile(2083, pki["org_ca"]), client_cert=pki["device"][0], client_key=str(bad_key))
    assert "TPCANARY" not in str(err.value)
    with pytest.raises(AuthConfigError):
        RadsecAuthenticator(profile(2083, None), client_cert=pki["device"][0], client_key=pki["device"][1])
