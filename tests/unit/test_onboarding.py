"""org/onboarding: one description -> gateway config, RADIUS config and a valid wire profile."""

import json

import pytest

from hal.directory.profile import SessionProfile
from org import onboarding

ORG = {
    "org_id": "acme", "name": "Acme Corp",
    "gateway": {"id": "gw.acme", "wan_address": "203.0.113.10", "lan": "10.20.0.0/24",
                "pool": "10.20.0.200-10.20.0.239", "devices": ["mfp-1.space-1"]},
    "radius": {"host": "10.20.0.50", "users": [{"id": "alice", "kind": "card"}]},
}
SECRETS = {"psk": "TPCANARY-psk-0123456789abcdef", "radius": "TPCANARYradius0123456789"}


def _files(tmp_path, org=ORG, secrets=SECRETS):
    (tmp_path / "org.json").write_text(json.dumps(org))
    (tmp_path / "secrets.json").write_text(json.dumps(secrets))
    return tmp_path / "org.json", tmp_path / "secrets.json"


def test_profile_is_a_valid_wire_profile(tmp_path):
    org, secrets = onboarding.load(*_files(tmp_path))
    profile = SessionProfile.from_wire(onboarding.profile(org, secrets))
    assert profile.vpn.remote_ts == ["10.20.0.0/24"] and profile.auth.host == "10.20.0.50"
    assert profile.vpn.psk.reveal() == SECRETS["psk"].encode()


def test_configs_are_written_private(tmp_path):
    org, secrets = onboarding.load(*_files(tmp_path))
    gw = onboarding.write_gateway_config(org, secrets, tmp_path / "gw")
    rad = onboarding.write_radius_config(org, secrets, tmp_path / "rad")
    assert (gw / "swanctl.conf").stat().st_mode & 0o077 == 0
    assert "pool" in (gw / "swanctl.conf").read_text()
    assert "alice" in (rad / "users").read_text()


@pytest.mark.parametrize("mutate", [
    lambda o: o.pop("gateway"),
    lambda o: o.update(colour="red"),
    lambda o: o["gateway"].update(devices=[]),
    lambda o: o["radius"]["users"].append({"id": "x", "kind": "card", "extra": 1}),
])
def test_bad_descriptions_are_refused_without_secrets_in_the_error(tmp_path, mutate):
    org = json.loads(json.dumps(ORG))
    mutate(org)
    with pytest.raises((onboarding.OnboardingError, ValueError)) as err:
        o, s = onboarding.load(*_files(tmp_path, org))
        onboarding.gateway(o, s)
        onboarding.radius(o, s)
    assert "TPCANARY" not in str(err.value)
