"""LDAP with the device certificate (issue 18), without a directory server: the profile contract
(`"bind": "device"`), the certificate-mode conversion (org/trust.py), the cloud's secret names, the
authenticator's checks of the device's files and the bind it makes, the keeper's options, and
org/ldap_config.py's slapd lines (the lab's slapd runs them: tests/integration/test_auth_ldap.py)."""

from __future__ import annotations

import copy
import json
import os
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from ldap3 import EXTERNAL, SASL, SIMPLE

import hal.auth.ldap as ldap_mod
from cloud.profiles import normalize, secret_names, split
from hal.auth import AuthConfigError, Unavailable, open_authenticator
from hal.auth.ldap import LdapAuthenticator
from hal.directory.profile import ProfileError, SessionProfile
from lab.services.ldap import make_certificates, seed_ldif, slapd_conf
from org import ldap_config
from org.gateway_certs import issue_gateway_cert, make_ca
from org.ldap_config import DeviceAccess, LdapConfigError, authz_regexp, slapd_conf_lines
from org.trust import certificate_profile

CANARY = "TPCANARY-acme-ldap-0123456789abcdef"
BASE = "dc=acme,dc=lab"
SERVICE = f"cn=mfp,ou=services,{BASE}"
CA_PEM = make_certificates("127.0.0.1")["ca.pem"]
ORG_CA_PEM = make_ca("acme").cert_pem()

PASSWORD_AUTH = {"kind": "ldap", "host": "10.20.0.50", "port": 389, "base_dn": BASE, "bind_dn": SERVICE,
                 "bind_password": CANARY, "user_attr": "uid", "card_attr": "carLicense", "timeout_s": 3,
                 "ca_pem": CA_PEM}
DEVICE_AUTH = {k: v for k, v in PASSWORD_AUTH.items() if k not in ("bind_dn", "bind_password")} | {"bind": "device"}


def wire(auth: dict, vpn_auth: str = "psk") -> dict:
    vpn = {"gateway": "10.78.0.11", "port": 500, "local_id": "mfp-1.space-1", "remote_id": "gw.acme",
           "auth": vpn_auth, "ca_cert_pem": None if vpn_auth == "psk" else ORG_CA_PEM,
           "ike_proposals": ["aes256gcm16"], "esp_proposals": ["aes256gcm16"], "remote_ts": ["10.20.0.0/24"],
           "dpd_delay_s": 1, **({"psk": "x" * 16} if vpn_auth == "psk" else {})}
    return {"org_id": "acme", "ttl_s": 300, "vpn": vpn, "auth": dict(auth),
            "policy": {"idle_timeout_s": 300, "max_hold_s": 3600, "combined_mode": False}}


@pytest.fixture
def device_files(tmp_path) -> dict:
    """The device's files as firmware/device_cert.py keeps them (a P-256 key, a certificate)."""
    ca = make_ca("space-1")
    ident = issue_gateway_cert(ca, "mfp-1.space-1")
    (tmp_path / "device-cert.pem").write_text(ident.cert_pem())
    (tmp_path / "ike.key").write_bytes(ident.key_pem())
    os.chmod(tmp_path / "ike.key", 0o600)
    return {"client_cert": str(tmp_path / "device-cert.pem"), "client_key": str(tmp_path / "ike.key")}


# -- the profile contract -------------------------------------------------------------------------

def test_a_device_bind_profile_round_trips_without_any_secret():
    p = SessionProfile.from_wire(wire(DEVICE_AUTH, "device"))
    assert p.auth.bind == "device" and p.auth.bind_dn is None and p.auth.bind_password is None
    assert p.secrets() == []
    assert p.to_wire() == wire(DEVICE_AUTH, "device")


def test_the_old_form_is_still_the_service_account():
    p = SessionProfile.from_wire(wire(PASSWORD_AUTH))
    assert p.auth.bind == "password" and p.auth.bind_dn == SERVICE
    assert p.to_wire() == wire(PASSWORD_AUTH)
    assert "bind" not in p.to_wire()["auth"]
    # said explicitly, it is the same profile (normalized to the old form)
    explicit = SessionProfile.from_wire(wire(PASSWORD_AUTH | {"bind": "password"}))
    assert explicit.to_wire() == wire(PASSWORD_AUTH)


@pytest.mark.parametrize("auth, what", [
    (DEVICE_AUTH | {"bind_password": CANARY}, "auth.bind_password: not with bind"),
    (DEVICE_AUTH | {"bind_dn": SERVICE}, "auth.bind_dn: not with bind"),
    (DEVICE_AUTH | {"bind": "certificate"}, "auth.bind: must be password or device"),
    (DEVICE_AUTH | {"bind": True}, "auth.bind: wrong type"),
    (DEVICE_AUTH | {"client_cert": "/etc/x.pem"}, "unknown keys"),
    ({k: v for k, v in DEVICE_AUTH.items() if k != "base_dn"}, "auth.base_dn: missing"),
    ({k: v for k, v in DEVICE_AUTH.items() if k != "ca_pem"}, "auth.ca_pem: missing"),
    ({k: v for k, v in PASSWORD_AUTH.items() if k != "bind_password"}, "auth.bind_password: missing"),
    ({k: v for k, v in PASSWORD_AUTH.items() if k != "bind_dn"}, "auth.bind_dn: missing"),
])
def test_strict_validation(auth, what):
    with pytest.raises(ProfileError, match=what) as exc:
        SessionProfile.from_wire(wire(auth))
    assert CANARY not in str(exc.value)


def test_the_cloud_stores_and_lists_no_secret_for_a_device_bind():
    public, sealed = split(normalize(wire(DEVICE_AUTH, "device")))
    assert json.loads(sealed) == {} and secret_names(public) == []
    public, sealed = split(normalize(wire(PASSWORD_AUTH)))
    assert json.loads(sealed) == {"vpn.psk": "x" * 16, "auth.bind_password": CANARY}
    assert secret_names(public) == ["vpn.psk", "auth.bind_password"]


# -- the certificate-mode conversion (org/trust.py) -----------------------------------------------

def test_certificate_mode_makes_an_ldap_auth_a_device_bind():
    psk = wire(PASSWORD_AUTH)
    cert = certificate_profile(copy.deepcopy(psk), ORG_CA_PEM)
    assert cert["auth"] == DEVICE_AUTH  # the directory's own CA stays: it verifies the LDAP server
    assert CANARY not in json.dumps(cert) and "x" * 16 not in json.dumps(cert)
    p = SessionProfile.from_wire(cert)
    assert p.secrets() == [] and p.vpn.auth == "device"
    assert psk == wire(PASSWORD_AUTH)  # the input is not changed
    # without its secrets (as the org's generator makes it) the result is the same
    bare = wire({k: v for k, v in PASSWORD_AUTH.items() if k != "bind_password"})
    assert certificate_profile(bare, ORG_CA_PEM)["auth"] == DEVICE_AUTH


# -- the authenticator ----------------------------------------------------------------------------

def device_profile():
    return SessionProfile.from_wire(wire(DEVICE_AUTH, "device")).auth


@pytest.mark.parametrize("options, what", [
    ({}, "needs the device's certificate and key files"),
    ({"client_cert": "", "client_key": ""}, "needs the device's certificate and key files"),
    ({"client_cert": "/nonexistent/device-cert.pem", "client_key": "/nonexistent/ike.key"}, "FileNotFoundError"),
])
def test_a_device_bind_without_the_device_files_is_a_config_error(options, what):
    with pytest.raises(AuthConfigError, match=what):
        open_authenticator(device_profile(), **options)


def test_device_files_that_do_not_load_are_a_config_error(device_files, tmp_path):
    (tmp_path / "other.key").write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(AuthConfigError, match="cannot use the device's files"):
        LdapAuthenticator(device_profile(), client_cert=device_files["client_cert"],
                          client_key=str(tmp_path / "other.key"))  # not the certificate's key


class Recorded:
    """Stands in for `_Directory`: records how the connection would bind, and stops there."""
    seen: list = []

    def __init__(self, conn, auth, deadline):
        self.seen.append((conn.authentication, conn.sasl_mechanism, conn.sasl_credentials, conn.user,
                          conn.password, getattr(conn.server.tls, "device_files", None)))

    def bind_service(self):
        raise ConnectionRefusedError


def test_a_device_bind_is_sasl_external_over_tls_with_the_device_certificate(device_files, monkeypatch):
    monkeypatch.setattr(ldap_mod, "_Directory", Recorded)
    Recorded.seen = []
    out = open_authenticator(device_profile(), **device_files).authenticate("alice", "acme")
    assert isinstance(out, Unavailable)
    assert Recorded.seen == [(SASL, EXTERNAL, "", None, None, (device_files["client_cert"],
                                                               device_files["client_key"]))]
    # the service account's bind is unchanged, and shows no certificate
    Recorded.seen = []
    open_authenticator(SessionProfile.from_wire(wire(PASSWORD_AUTH)).auth, **device_files).authenticate("alice", "acme")
    (how, _, _, user, password, files), = Recorded.seen
    assert (how, user, password == CANARY.encode(), files) == (SIMPLE, SERVICE, True, None)


def test_device_files_gone_during_the_session_are_unavailable(device_files, monkeypatch):
    auth = open_authenticator(device_profile(), **device_files)
    os.unlink(device_files["client_key"])

    def no_network(*a, **kw):
        raise AssertionError("a connection was made")
    monkeypatch.setattr(ldap_mod, "Connection", no_network)
    out = auth.authenticate("alice", "acme")
    assert isinstance(out, Unavailable) and "device certificate's files are missing" in out.reason


# -- the keeper's options -------------------------------------------------------------------------

def test_the_keeper_gives_ldap_the_device_files_only_for_a_device_bind(tmp_path):
    from firmware.config import DEVICE_CERT_FILE, DEVICE_KEY_FILE
    from firmware.secret_keeper import _Keeper

    (tmp_path / DEVICE_CERT_FILE).write_text("cert")
    (tmp_path / DEVICE_KEY_FILE).write_text("key")
    keeper = _Keeper.__new__(_Keeper)  # no directory client, no threads: the method reads cfg and profile
    keeper.cfg = SimpleNamespace(device=SimpleNamespace(state_dir=str(tmp_path)))
    keeper.profile = SessionProfile.from_wire(wire(DEVICE_AUTH, "device"))
    assert keeper._authenticator_options() == {"client_cert": str(tmp_path / DEVICE_CERT_FILE),
                                               "client_key": str(tmp_path / DEVICE_KEY_FILE)}
    keeper.profile = SessionProfile.from_wire(wire(PASSWORD_AUTH))
    assert keeper._authenticator_options() == {}
    keeper.profile = None
    assert keeper._authenticator_options() == {}


# -- the org's slapd (org/ldap_config.py, lab/services/ldap.py) -----------------------------------

ACCESS = DeviceAccess("/etc/ldap/tls/space-device-ca.pem", SERVICE, ("mfp-1.space-1", "mfp-2.space-1"))


def test_slapd_lines_verify_clients_against_the_space_ca_and_map_each_listed_device():
    assert slapd_conf_lines(ACCESS).splitlines()[1:] == [
        "TLSCACertificateFile /etc/ldap/tls/space-device-ca.pem",
        "TLSVerifyClient try",
        f'authz-regexp "^cn=mfp-1[.]space-1$" "{SERVICE}"',
        f'authz-regexp "^cn=mfp-2[.]space-1$" "{SERVICE}"',
    ]
    # no backslash: slapd.conf's parser would eat it (and "\." would reach the regex as ".")
    assert "\\" not in authz_regexp("Mfp-1.Space-1", SERVICE) and "^cn=mfp-1[.]space-1$" in authz_regexp(
        "Mfp-1.Space-1", SERVICE)


@pytest.mark.parametrize("change, what", [
    (dict(device_ca_file="space-ca.pem"), "device_ca_file"),
    (dict(device_ca_file="/etc/ldap/my ca.pem"), "device_ca_file"),
    (dict(device_ca_file="/etc/../ca.pem"), "device_ca_file"),
    (dict(identity_dn="not a dn"), "identity_dn"),
    (dict(identity_dn='cn=a",dc=b'), "identity_dn"),
    (dict(identity_dn="cn=a\\,b,dc=c"), "identity_dn"),
    (dict(identity_dn="cn=a\nTLSVerifyClient never"), "identity_dn"),
    (dict(devices=()), "devices"),
    (dict(devices=("mfp-1.space-1", "mfp-1.space-1")), "listed twice"),
    (dict(devices=(".*",)), "not a device id"),
    (dict(devices=("a$|^cn=",)), "not a device id"),
    (dict(verify_client="never"), "verify_client"),
])
def test_slapd_lines_refuse_what_could_widen_the_mapping(change, what):
    from dataclasses import replace

    with pytest.raises(LdapConfigError, match=what):
        slapd_conf_lines(replace(ACCESS, **change))


def test_the_cli_prints_the_lines(capsys):
    from org import cli

    assert cli.main(["ldap-config", "--device-ca-file", ACCESS.device_ca_file, "--identity", SERVICE,
                     "--device", "mfp-1.space-1", "--device", "mfp-2.space-1"]) == 0
    assert capsys.readouterr().out == slapd_conf_lines(ACCESS)
    assert ldap_config.main(["--device-ca-file", "relative.pem", "--identity", SERVICE, "--device", "x"]) == 1
    assert "device_ca_file" in capsys.readouterr().err


def test_the_lab_slapd_in_certificate_mode(tmp_path):
    conf = slapd_conf("acme", tmp_path, devices=("mfp-1.space-1",))
    assert f"TLSCACertificateFile {tmp_path}/tls/space-device-ca.pem\n" in conf
    assert "TLSVerifyClient try\n" in conf and f'authz-regexp "^cn=mfp-1[.]space-1$" "{SERVICE}"' in conf
    assert conf.index("authz-regexp") < conf.index("database mdb")  # a global directive
    assert f"{tmp_path}/tls/ca.pem" not in conf  # the lab LDAP CA is not a client CA
    psk = slapd_conf("acme", tmp_path)
    assert f"TLSCACertificateFile {tmp_path}/tls/ca.pem\n" in psk and "authz-regexp" not in psk
    # certificate mode: the service account has no password at all
    entries = {e.split("\n", 1)[0]: e for e in seed_ldif("acme", None).split("\n\n")}
    assert "userPassword" not in entries[f"dn: {SERVICE}"]
    assert "userPassword: {SSHA}" in {e.split("\n", 1)[0]: e for e in seed_ldif("acme", b"pw").split("\n\n")}[
        f"dn: {SERVICE}"]
