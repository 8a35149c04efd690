"""The session profile wire contract: strict validation, secrets never shown."""

import copy

import pytest

from hal.directory.profile import ProfileError, Secret, SessionProfile

WIRE = {
    "org_id": "acme", "ttl_s": 300,
    "vpn": {"gateway": "10.78.0.11", "port": 500, "local_id": "mfp-1", "remote_id": "gw.acme",
            "auth": "psk", "psk": "TPCANARY-psk", "ca_cert_pem": None,
            "ike_proposals": ["aes256-sha256-modp2048"], "esp_proposals": ["aes256gcm16"],
            "remote_ts": ["10.20.0.0/24"], "dpd_delay_s": 1},
    "auth": {"kind": "radius", "host": "10.20.0.50", "port": 1812, "secret": "TPCANARY-rad",
             "user_format": "{user}@{org}", "timeout_s": 3.0, "retries": 2},
    "policy": {"idle_timeout_s": 300, "max_hold_s": 3600, "combined_mode": False},
}


def test_round_trip():
    assert SessionProfile.from_wire(copy.deepcopy(WIRE)).to_wire() == WIRE


def test_secrets_are_redacted_and_wipeable():
    p = SessionProfile.from_wire(copy.deepcopy(WIRE))
    assert "TPCANARY" not in repr(p)
    assert all(len(s) for s in p.secrets())
    p.wipe()
    assert all(s.wiped for s in p.secrets())


def _mutated(path, value):
    w = copy.deepcopy(WIRE)
    obj = w
    for key in path[:-1]:
        obj = obj[key]
    if value is KeyError:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value
    return w


@pytest.mark.parametrize("path,value", [
    (("org_id",), "bad id with spaces"),
    (("org_id",), KeyError),
    (("extra",), 1),
    (("vpn", "auth"), "none"),
    (("vpn", "psk"), KeyError),
    (("vpn", "port"), 70000),
    (("vpn", "port"), True),
    (("vpn", "remote_ts"), ["10.20.0.1/24"]),
    (("vpn", "remote_ts"), []),
    (("vpn", "unknown"), "x"),
    (("auth", "kind"), "kerberos"),
    (("auth", "user_format"), "{nope}"),
    (("auth", "timeout_s"), 0),
    (("policy", "combined_mode"), "yes"),
    (("ttl_s",), -1),
])
def test_rejects_malformed(path, value):
    with pytest.raises(ProfileError) as err:
        SessionProfile.from_wire(_mutated(path, value))
    assert "TPCANARY" not in str(err.value)


def test_secret_is_not_hashable_nor_printed():
    s = Secret("TPCANARY-x")
    assert "TPCANARY" not in f"{s} {s!r}"
    with pytest.raises(TypeError):
        hash(s)
