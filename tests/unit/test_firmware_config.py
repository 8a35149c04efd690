"""The firmware config schema: strict, layered, dumpable."""

import json

import pytest

from firmware import config
from firmware.config import ConfigError


def test_defaults_are_valid_and_dumpable():
    cfg = config.load(None)
    dumped = cfg.as_dict()
    assert dumped["card"]["kind"] == "pcsc"
    assert config.from_dict(dumped).as_dict() == dumped


@pytest.mark.parametrize("toml,message", [
    ("[nope]\nx=1\n", "unknown section [nope]"),
    ("[card]\ncolour='red'\n", "unknown key card.colour"),
    ("[card]\nkind='magic'\n", "card.kind must be pcsc, nfcpy or wedge"),
    ("[tunnel]\nup_timeout_s='fast'\n", "tunnel.up_timeout_s must be float"),
    ("[session]\nipp_port=0\n", "session.ipp_port must be between"),
    ("[session]\ntmpfs_dir='relative'\n", "must be an absolute path"),
    ("[cloud]\nurl='ftp://x'\n", "must be an https URL"),
    ("[session]\nipp_port=true\n", "must be int"),
    ("card = 3\n", "[card] must be a table"),
    ("[card\n", "Expected"),
    ("[firewall]\nmanagement='10.77.0.5/32'\n", "firewall.management must be list"),
    ("[firewall]\nmanagement=['10.77.0.5/24']\n", "firewall.management 10.77.0.5/24 has host bits set"),
    ("[firewall]\nmanagement=['ssh.example']\n", "firewall.management 'ssh.example' does not appear"),
    ("[firewall]\nmanagement=[22]\n", "firewall.management not a CIDR: 22"),
    ("[firewall]\nmanagement=['::/0']\n", "must not be everything"),
    ("[firewall]\nssh=true\n", "unknown key firewall.ssh"),
])
def test_rejects_bad_files(tmp_path, toml, message):
    path = tmp_path / "firmware.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert message in str(err.value)


def test_layers_file_then_enrolment(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    path = tmp_path / "firmware.toml"
    path.write_text(f"[device]\nstate_dir='{state}'\n[cloud]\nurl='https://old.example'\ntimeout_s=3\n")
    (state / "enrolment.json").write_text(json.dumps(
        {"device_id": "dev-1", "cloud_url": "https://cloud.example:8443", "ca_file": "/etc/ca.pem"}))
    cfg = config.load(path)
    assert cfg.device.device_id == "dev-1"
    assert cfg.cloud.url == "https://cloud.example:8443"
    assert cfg.cloud.timeout_s == 3.0


def test_required_file_missing(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "absent.toml", required=True)


def test_firewall_management_default_is_no_ssh_and_cidrs_pass(tmp_path):
    assert config.load(None).firewall.management == []
    path = tmp_path / "firmware.toml"
    path.write_text("[firewall]\nmanagement = ['10.77.0.5/32', 'fd00:77::/64']\n")
    cfg = config.load(path)
    assert cfg.firewall.management == ["10.77.0.5/32", "fd00:77::/64"]
    assert config.from_dict(cfg.as_dict()).as_dict() == cfg.as_dict()


def test_the_cloud_url_must_be_https():
    import pytest
    from firmware import config as fwconfig
    for bad in ("http://cloud.example", "ftp://cloud.example", "cloud.example"):
        with pytest.raises(Exception, match="https"):
            fwconfig.from_dict({"cloud": {"url": bad}})
    assert fwconfig.from_dict({"cloud": {"url": "https://cloud.example/api"}}).cloud.url == "https://cloud.example/api"
