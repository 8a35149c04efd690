"""org/onboarding in certificate mode (issue 18): `"trust": "cert"` with the org's CA and the space's
device CA gives a profile without any secret, a gateway that takes the listed devices by their
certificates, and a RADIUS server that serves RadSec only."""

import ipaddress
import json
import subprocess

import pytest
from cryptography import x509

from hal.directory.profile import SessionProfile
from org import cli, onboarding, trust
from org.gateway_certs import make_ca
from prereq import need_binary

ORG = {
    "org_id": "acme", "trust": "cert",
    "gateway": {"id": "gw.acme", "wan_address": "203.0.113.10", "lan": "10.20.0.0/24",
                "pool": "10.20.0.200-10.20.0.239", "devices": ["mfp-1.space-1", "mfp-2.space-1"]},
    "radius": {"host": "10.20.0.50", "users": [{"id": "alice", "kind": "card"}, {"id": "bob", "kind": "pin",
                                                                                "pin": "2468"}]},
    "desks": {"networks": ["10.20.0.64/26"], "keys": ["11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="]},
}


@pytest.fixture
def files(tmp_path):
    (tmp_path / "org.json").write_text(json.dumps(ORG))
    (tmp_path / "secrets.json").write_text("{}")  # no PSK, no RADIUS secret
    trust.init_ca("acme", tmp_path / "org-ca")
    (tmp_path / "space-ca.pem").write_text(make_ca("space-1").cert_pem())
    return tmp_path


def _load(files):
    org, secrets = onboarding.load(files / "org.json", files / "secrets.json")
    return org, secrets, trust.load(files / "org-ca", files / "space-ca.pem")


def test_the_profile_holds_no_secret_and_verifies_the_orgs_servers_with_its_ca(files):
    org, secrets, t = _load(files)
    wire = onboarding.profile(org, secrets, t)
    prof = SessionProfile.from_wire(wire)
    assert prof.vpn.auth == "device" and prof.vpn.secrets() == [] and prof.auth.kind == "radsec"
    assert prof.auth.secrets() == [] and "psk" not in wire["vpn"] and "secret" not in wire["auth"]
    ca = (files / "org-ca" / "ca.pem").read_text()
    assert wire["vpn"]["ca_cert_pem"] == ca and wire["auth"]["ca_pem"] == ca and wire["auth"]["port"] == 2083


def test_the_gateway_takes_each_device_by_its_certificate_and_shows_one_of_the_orgs_ca(files, tmp_path):
    org, secrets, t = _load(files)
    out = onboarding.write_gateway_config(org, secrets, tmp_path / "gw", t)
    conf = (out / "swanctl.conf").read_text()
    assert conf.count("auth = pubkey") == 4 and "secret =" not in conf and "unique = never" in conf
    assert (out / "private" / "gateway.key").stat().st_mode & 0o077 == 0
    gw = x509.load_pem_x509_certificate((out / "x509" / "gateway.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((files / "org-ca" / "ca.pem").read_bytes())
    gw.verify_directly_issued_by(ca)
    assert gw.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["gw.acme"]
    assert (out / "x509ca" / "space-device-ca.pem").read_text() == (files / "space-ca.pem").read_text()


def test_the_radius_server_serves_radsec_only_to_the_listed_devices(files, tmp_path):
    org, secrets, t = _load(files)
    out = onboarding.write_radius_config(org, secrets, tmp_path / "radius", t)
    conf = (out / "radiusd.conf").read_text() + (out / "clients.conf").read_text()
    assert "proto = tls" in conf and "proto = udp" not in conf
    assert {line.strip() for line in conf.splitlines() if line.strip().startswith("secret")} == {"secret = radsec"}
    # the listed devices only (a regular expression of their ids, dots escaped)
    assert "mfp-1[.]space-1|mfp-2[.]space-1" in conf
    server = x509.load_pem_x509_certificate((out / "radsec" / "server.pem").read_bytes())
    assert server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.IPAddress) == [ipaddress.ip_address("10.20.0.50")]
    assert (out / "radsec" / "server.key").stat().st_mode & 0o077 == 0
    need_binary("/usr/sbin/freeradius")
    check = subprocess.run(["/usr/sbin/freeradius", "-C", "-d", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]


def test_certificate_mode_without_its_cas_is_refused(files):
    org, secrets = onboarding.load(files / "org.json", files / "secrets.json")
    with pytest.raises(onboarding.OnboardingError, match="--org-ca"):
        onboarding.profile(org, secrets)
    with pytest.raises(SystemExit) as exited:  # the CLI: an argparse error, exit status 2
        cli.main(["profile", "--org", str(files / "org.json"), "--secrets", str(files / "secrets.json")])
    assert exited.value.code == 2


def test_the_cli_prints_a_secretless_profile_and_inits_a_ca_once(files, capsys):
    argv = ["profile", "--org", str(files / "org.json"), "--secrets", str(files / "secrets.json"),
            "--org-ca", str(files / "org-ca"), "--device-ca", str(files / "space-ca.pem")]
    assert cli.main(argv) == 0
    wire = json.loads(capsys.readouterr().out)
    assert wire["vpn"]["auth"] == "device"
    assert cli.main(["ca", "init", "--org-id", "acme", "--out", str(files / "org-ca")]) == 1  # never over one
    assert (files / "org-ca" / "ca.key").stat().st_mode & 0o077 == 0


def test_psk_mode_is_said_to_be_the_weaker_one(tmp_path, capsys):
    org = {**ORG, "trust": "psk"}
    (tmp_path / "org.json").write_text(json.dumps(org))
    (tmp_path / "secrets.json").write_text(json.dumps({"psk": "p" * 24, "radius": "r" * 24}))
    assert cli.main(["profile", "--org", str(tmp_path / "org.json"), "--secrets", str(tmp_path / "secrets.json")]) == 0
    assert "weaker" in capsys.readouterr().err
