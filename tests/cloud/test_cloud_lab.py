"""The lab's directory: `CloudService` on host `cloud` (10.78.0.2:8443, lab CA); the MFP host
`office` enrols and fetches profiles across the lab's WAN through hal/directory."""

from __future__ import annotations

import json
import sys

import pytest

from lab.orgs import CANARY_MARK, DEVICE_ID, ORGS, lab_profile
from lab.services import cloud as cloud_svc

PROBE = r"""
import json, sys
from hal.directory import DirectoryError
from hal.directory.client import DirectoryClient, enrol
url, token, key_dir, ca = sys.argv[1:5]
dev = enrol(url, token, key_dir, ca_file=ca)
out = {"device_id": dev.device_id, "lookups": {}}
with DirectoryClient(url, dev.device_id, dev.key_path, ca) as client:
    for org in sys.argv[5:]:
        try:
            p = client.fetch_profile(org)
            out["lookups"][org] = {"ok": True, "gateway": p.vpn.gateway, "psk_len": len(p.vpn.psk)}
            p.wipe()
        except DirectoryError as exc:
            out["lookups"][org] = {"ok": False, "error": type(exc).__name__}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def lab_cloud(lab):
    svc = cloud_svc.CloudService()
    svc.start(lab)
    cloud_svc.seed(lab, orgs={o: lab_profile(lab, o) for o in ORGS},
                   contracts=[o for o, s in ORGS.items() if s.contracted])
    yield svc
    svc.stop(lab)
    assert not svc.running(lab)


def test_office_enrols_and_fetches_profiles_over_the_lab_wan(lab, lab_cloud):
    assert lab_cloud.status(lab)["answers"]
    token = cloud_svc.enrol_token(lab, DEVICE_ID)
    office = lab.host("office")
    key_dir = "/tmp/directory-key"  # office's own /tmp
    res = office.run([sys.executable, "-c", PROBE, cloud_svc.url(lab), token, key_dir, str(cloud_svc.ca_file(lab)),
                      "acme", "globex", "initech"], timeout=60)
    out = json.loads(res.stdout)
    assert out["device_id"] == DEVICE_ID
    assert out["lookups"]["acme"] == {"ok": True, "gateway": "10.78.0.11", "psk_len": out["lookups"]["acme"]["psk_len"]}
    assert out["lookups"]["globex"]["ok"] and out["lookups"]["acme"]["psk_len"] > 20
    assert out["lookups"]["initech"] == {"ok": False, "error": "DirectoryRefused"}
    assert office.path("/tmp/directory-key/device.key").stat().st_mode & 0o077 == 0
    # the admin CLI against the lab's database (`tenantprint lab cloud -- ...`)
    cli = cloud_svc.run_cli(lab, ["audit", "--device", DEVICE_ID, "--json"])
    assert cli.returncode == 0, cli.stderr
    events = json.loads(cli.stdout)
    assert [(e["org_id"], e["outcome"]) for e in events if e["action"] == "lookup"] == [
        ("acme", "granted"), ("globex", "granted"), ("initech", "refused")]
    shown = cloud_svc.run_cli(lab, ["org", "show", "acme"])
    assert shown.returncode == 0 and CANARY_MARK not in shown.stdout + shown.stderr
    log = (lab.layout.logs_dir / "cloud.log").read_text()
    assert CANARY_MARK not in log
