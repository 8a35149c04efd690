"""org/gateway_config.py: validation and the generated strongSwan gateway configuration."""

from __future__ import annotations

import dataclasses

import pytest

from org.gateway_config import (DeviceGrant, GatewayConfigError, OrgGateway, conn_name, credential_files, strongswan_conf,
                                swanctl_conf, validate)

PSK = b"TPCANARY-acme-psk-0123456789abcdef"


def gw(**kw) -> OrgGateway:
    base = OrgGateway(org_id="acme", gateway_id="gw.acme", wan_address="10.78.0.11", lan="10.20.0.0/24",
                      pool="10.20.0.200-10.20.0.239", devices=(DeviceGrant("mfp-1.space-1", "psk", PSK),),
                      lan_reserved=("10.20.0.1", "10.20.0.50"), auth_host="10.20.0.50",
                      lan_address="10.20.0.1", desk_networks=("10.20.0.64/26",))
    return dataclasses.replace(base, **kw)


def test_swanctl_conf_connection_pool_and_secret():
    text = swanctl_conf(gw())
    assert "mfp-mfp-1-space-1 {" in text
    assert "local_addrs = 10.78.0.11" in text
    assert "pools = pool-acme" in text and "addrs = 10.20.0.200-10.20.0.239" in text
    # the MFP's child SA reaches the auth server and the desks only, not the whole LAN
    assert "local_ts = 10.20.0.1-10.20.0.127\n" in text and "10.20.0.0/24" not in text
    assert 'id = "gw.acme"' in text and 'id = "mfp-1.space-1"' in text
    assert "dpd_delay = 1s" in text and "dpd_action = clear" in text
    # The secret is hex-encoded (no quoting issues), and only in the secrets section.
    assert f"secret = 0x{PSK.hex()}" in text
    assert PSK.decode() not in text


def test_strongswan_conf_has_farp_and_no_secret():
    text = strongswan_conf(gw())
    assert "farp" in text.split("load =")[1].splitlines()[0]
    assert "kernel-libipsec" in text
    assert PSK.hex() not in text and PSK.decode() not in text


def test_conn_names_follow_the_gateway_agent_prefix():
    assert conn_name("MFP-1.Space_1") == "mfp-mfp-1-space-1"


@pytest.mark.parametrize("change,field", [
    ({"pool": "10.30.0.200-10.30.0.239"}, "pool"),
    ({"pool": "10.20.0.239-10.20.0.200"}, "pool"),
    ({"pool": "10.20.0.0-10.20.0.10"}, "pool"),
    ({"pool": "10.20.0.40-10.20.0.60"}, "reserved"),
    ({"pool": "nonsense"}, "pool"),
    ({"lan": "10.20.0.1/24"}, "lan"),
    ({"devices": ()}, "devices"),
    ({"devices": (DeviceGrant("mfp-1", "psk", b"short"),)}, "shorter"),
    ({"devices": (DeviceGrant("mfp-1", "psk", PSK), DeviceGrant("mfp-1", "psk", PSK))}, "twice"),
    ({"devices": (DeviceGrant('mfp"1', "psk", PSK),)}, "identity"),
    ({"devices": (DeviceGrant("mfp-1", "pubkey", PSK),)}, "not supported"),
    ({"gateway_id": "gw acme\n"}, "gateway_id"),
    ({"ike_proposals": ("aes256;rm",)}, "proposal"),
    ({"auth_host": ""}, "auth_host"),
    ({"auth_host": "10.30.0.5"}, "auth_host"),
    ({"desk_networks": ()}, "desk_networks"),
    ({"lan_address": ""}, "lan_address"),
    ({"lan_address": "10.30.0.1"}, "lan_address"),
    ({"desk_networks": ("10.20.0.0/16",)}, "desk_networks"),
    ({"desk_networks": ("10.20.0.1/24",)}, "desk_networks"),
    ({"desk_networks": ("0.0.0.0/0",)}, "desk_networks"),
])
def test_invalid_descriptions_are_rejected_without_showing_secrets(change, field):
    with pytest.raises(GatewayConfigError) as err:
        validate(gw(**change))
    assert field in str(err.value)
    assert PSK.decode() not in str(err.value)


def test_local_ts_is_one_range_from_the_gateways_address_to_the_farthest_need():
    assert "local_ts = 10.20.0.1-10.20.0.50\n" in swanctl_conf(gw(desk_networks=("10.20.0.50/32",)))
    assert "local_ts = 10.20.0.0/25\n" in swanctl_conf(gw(desk_networks=("10.20.0.0/25",)))
    assert "local_ts = 10.20.0.0/26\n" in swanctl_conf(gw(lan_address="10.20.0.0", auth_host="10.20.0.63", desk_networks=("10.20.0.32/27",)))


def test_repr_hides_psk():
    assert PSK.decode() not in repr(gw())


def _cert_mode(**kw) -> OrgGateway:
    from org.gateway_certs import issue_gateway_cert, make_ca

    ca = make_ca("acme")
    ident = issue_gateway_cert(ca, "gw.acme")
    space = make_ca("space-1")
    return gw(devices=(DeviceGrant("mfp-1.space-1", "cert"),), device_ca_pem=space.cert_pem(),
              gateway_cert_pem=ident.cert_pem(), gateway_key_pem=ident.key_pem(), **kw)


def test_certificate_mode_holds_no_secret_and_never_lets_a_copy_replace_the_sa():
    g = _cert_mode()
    conf = swanctl_conf(g)
    assert "auth = pubkey" in conf and "cacerts = space-device-ca.pem" in conf and "certs = gateway.pem" in conf
    assert "unique = never" in conf and "unique = replace" not in conf  # the agent keeps the first SA
    assert "secret =" not in conf and "psk" not in conf
    files = credential_files(g)
    assert set(files) == {"x509/gateway.pem", "x509ca/space-device-ca.pem", "private/gateway.key"}
    assert files["private/gateway.key"][1] == 0o600 and b"PRIVATE KEY" in files["private/gateway.key"][0]
    assert credential_files(gw()) == {}  # PSK mode: none


def test_certificate_mode_needs_its_certificates_and_no_psk():
    with pytest.raises(GatewayConfigError, match="device_ca_pem"):
        validate(_cert_mode().__class__(**{**_cert_mode().__dict__, "device_ca_pem": ""}))
    with pytest.raises(GatewayConfigError, match="no PSK"):
        validate(gw(devices=(DeviceGrant("mfp-1.space-1", "cert", b"x" * 32),)))
