"""Issue 18: an org's gateway reports a duplicate IKE SA with a device's identity, and the cloud
audits it as that device's anomaly, against the real cloud app on SQLite and PostgreSQL. Only the
gateway the org's certificate-mode profile describes is believed (its CA, its identity); a forged,
replayed, stale or misdirected report adds no audit row and is counted as a refusal."""

from __future__ import annotations

import copy
import time

import pytest

from org.gateway_certs import GatewayKey, issue_gateway_cert, make_ca
from org.gateway_report import DUPLICATE_PATH, duplicate_body, sign_headers
from org.trust import certificate_profile

DEVICE = "mfp-1.space-1"


@pytest.fixture
def acme(cloud):
    """acme in certificate mode (its CA, gateway `gw.acme`), the device enrolled."""
    ca = make_ca("acme")
    cloud.admin.set_profile("acme", certificate_profile(copy.deepcopy(cloud.profiles["acme"]), ca.cert_pem()))
    cloud.enrol(DEVICE)
    return ca, issue_gateway_cert(ca, "gw.acme")


def report(cloud, gw, *, org="acme", device=DEVICE, body=None, headers=None, now=None, sign_org=None):
    path = DUPLICATE_PATH.format(org=org)
    body = duplicate_body(device, "10.77.0.20", time.time()) if body is None else body
    signed = headers or sign_headers(GatewayKey(gw.cert, gw.key), sign_org or org, "POST", path, body, now=now)
    return cloud.http.post(path, content=body, headers={**signed, "Content-Type": "application/json"}), signed


def duplicates(cloud) -> list[dict]:
    return [e for e in cloud.admin.audit() if e["action"] == "anomaly" and e["outcome"] == "duplicate-ike-sa"]


def refusals(cloud) -> dict[str, int]:
    from cloud.refusals import counted
    cloud.app.state.directory.refusals.flush()
    out: dict[str, int] = {}
    for r in counted(cloud.engine):
        if r["action"] == "gateway-report":
            out[r["reason"]] = out.get(r["reason"], 0) + r["count"]
    return out


def test_the_gateways_report_is_audited_as_the_devices_anomaly(cloud, acme):
    _, gw = acme
    answer, _ = report(cloud, gw)
    assert answer.status_code == 201, answer.text
    [event] = duplicates(cloud)
    assert (event["device_id"], event["org_id"], event["source"]) == (DEVICE, "acme", "10.77.0.20")
    # `tenantprint cloud audit --device` finds it with the device's other events
    assert any(e["outcome"] == "duplicate-ike-sa" for e in cloud.admin.audit(device_id=DEVICE))


def test_a_replayed_report_is_refused(cloud, acme):
    _, gw = acme
    first, signed = report(cloud, gw)
    assert first.status_code == 201
    body = duplicate_body(DEVICE, "10.77.0.20", time.time())
    again, _ = report(cloud, gw, headers=signed, body=body)
    assert again.status_code == 401  # the body differs: the signature does not cover it
    path = DUPLICATE_PATH.format(org="acme")
    same = cloud.http.post(path, content=first.request.content, headers=dict(first.request.headers))
    assert same.status_code == 401  # the very same request: its nonce was spent
    assert len(duplicates(cloud)) == 1
    assert refusals(cloud).get("stale-request") == 1 and refusals(cloud).get("bad-signature") == 1


def test_only_the_orgs_own_gateway_is_believed(cloud, acme):
    ca, gw = acme
    stranger = issue_gateway_cert(make_ca("acme"), "gw.acme")  # same names, another CA
    radius = issue_gateway_cert(ca, "10.20.0.50")  # the org CA's other certificate (its RADIUS server)
    for who in (stranger, radius):
        answer, _ = report(cloud, who)
        assert answer.status_code == 401
    answer, _ = report(cloud, gw, org="globex", sign_org="globex")  # globex is in PSK mode: no gateway known
    assert answer.status_code == 401
    answer, _ = report(cloud, gw, org="acme", sign_org="globex")  # signed for another org
    assert answer.status_code == 401
    answer, _ = report(cloud, gw, now=time.time() - 600)  # stale
    assert answer.status_code == 401
    answer, _ = report(cloud, gw, headers={"X-TP-Gateway-Cert": "!!"})
    assert answer.status_code == 401
    assert duplicates(cloud) == []
    counts = refusals(cloud)
    assert counts.get("bad-certificate", 0) == 3 and counts.get("bad-signature", 0) == 1
    assert counts.get("stale-request", 0) == 1 and counts.get("malformed-headers", 0) == 1
    # no refusal became an audit row naming the device
    assert [e for e in cloud.admin.audit(device_id=DEVICE) if e["action"] == "gateway-report"] == []


def test_a_signed_report_that_makes_no_sense_is_malformed(cloud, acme):
    _, gw = acme
    for body in (duplicate_body("mfp-9.space-1", "10.77.0.20", time.time()),  # no such device
                 duplicate_body(DEVICE, "not-an-address", time.time()),
                 b'{"device_id": "mfp-1.space-1"}', b"[]"):
        answer, _ = report(cloud, gw, body=body)
        assert answer.status_code == 422, body
    assert duplicates(cloud) == []
