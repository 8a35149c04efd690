"""Issue 18: one open session per device per org. A granted lookup opens the device's session with
that org; the device reports its end; a lookup for an org the device already holds a session with
is a copy of its keys at work beside it, audited as an anomaly (and still answered: a thief's
lookup must not lock the real device out). On SQLite and PostgreSQL, against the real app."""

from __future__ import annotations

import json

import pytest

from hal.directory.signing import sign_headers

PATH = "/v1/device/sessions/end"


def anomalies(cloud, device_id: str) -> list[tuple[str | None, str | None]]:
    return [(e["org_id"], e["source"]) for e in cloud.admin.audit(device_id=device_id)
            if e["action"] == "anomaly" and e["outcome"] == "second-session"]


def test_a_second_session_with_one_org_is_an_anomaly_until_the_first_ended(cloud):
    device = cloud.enrol()
    with cloud.client(device) as dc:
        dc.fetch_profile("acme").wipe()
        dc.fetch_profile("globex").wipe()  # sessions with several orgs at once are the product
        assert anomalies(cloud, device.device_id) == []
        dc.fetch_profile("acme").wipe()  # acme again while its session is open: a copy of the device
        assert anomalies(cloud, device.device_id) == [("acme", "testclient")]
        assert dc.end_sessions("acme") == 1
        dc.fetch_profile("acme").wipe()  # after the end: a new session, no anomaly
        assert len(anomalies(cloud, device.device_id)) == 1
        assert dc.end_sessions(None) == 2  # the daemon's start: every session (acme, globex) ended
        dc.fetch_profile("globex").wipe()
        assert len(anomalies(cloud, device.device_id)) == 1


def test_an_end_report_is_the_devices_own_and_counts_once(cloud):
    device = cloud.enrol()
    other = cloud.enrol("mfp-2.space-1")
    with cloud.client(device) as dc:
        dc.fetch_profile("acme").wipe()
    from hal.directory.client import load_key
    body = json.dumps({"org_id": "acme"}).encode()
    signed = sign_headers(load_key(device.key_path), device.device_id, "POST", PATH, body)
    first = cloud.http.post(PATH, content=body, headers={**signed, "Content-Type": "application/json"})
    assert first.status_code == 200 and first.json() == {"ended": 1}
    again = cloud.http.post(PATH, content=body, headers={**signed, "Content-Type": "application/json"})
    assert again.status_code == 401  # its nonce is spent: a replay closes no session the device opens later
    forged = sign_headers(load_key(other.key_path), device.device_id, "POST", PATH, body)  # another device's key
    assert cloud.http.post(PATH, content=body, headers={**forged, "Content-Type": "application/json"}).status_code == 401
    assert cloud.http.post(PATH, content=body).status_code == 401  # unsigned


@pytest.mark.parametrize("body", [b"{}", b'{"org_id": 7}', b'{"org_id": "acme", "x": 1}', b"[]", b"not json",
                                  b'{"org_id": "../etc"}'])
def test_a_malformed_end_report_is_refused(cloud, body):
    device = cloud.enrol()
    from hal.directory.client import load_key
    signed = sign_headers(load_key(device.key_path), device.device_id, "POST", PATH, body)
    answer = cloud.http.post(PATH, content=body, headers={**signed, "Content-Type": "application/json"})
    assert answer.status_code == 422


def test_a_device_with_a_p256_key_enrols_and_looks_up(cloud, tmp_path):
    """The cloud side of a device key in a TPM (P-256; hal/tpm/signer.py): enrolment takes its
    point, lookups signed with it pass, and signatures of another P-256 key do not."""
    import base64

    from cryptography.hazmat.primitives.asymmetric import ec

    from hal.directory.signing import public_key_b64

    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    token = cloud.admin.enrol_token("space-1", "mfp-7.space-1")["token"]
    r = cloud.http.post("/v1/enrol", json={"token": token, "public_key": public_key_b64(key)})
    assert r.status_code == 201, r.text
    path = "/v1/orgs/acme/profile"
    ok = cloud.http.get(path, headers=sign_headers(key, "mfp-7.space-1", "GET", path, b""))
    assert ok.status_code == 200 and ok.json()["org_id"] == "acme"
    assert cloud.http.get(path, headers=sign_headers(other, "mfp-7.space-1", "GET", path, b"")).status_code == 401
    bad = base64.b64encode(b"\x04" + b"\x00" * 64).decode()  # not a point on the curve
    token = cloud.admin.enrol_token("space-1", "mfp-8.space-1")["token"]
    assert cloud.http.post("/v1/enrol", json={"token": token, "public_key": bad}).status_code == 403
