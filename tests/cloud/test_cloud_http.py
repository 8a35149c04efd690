"""The HTTP surface: malformed and oversized requests get 4xx, never 500; the OpenAPI schema is
fuzzed (schemathesis) on SQLite and PostgreSQL; the admin CLI never prints a secret."""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from conftest import CANARY


# The API docs are served only when configured (default off); fuzzing reads the schema from them,
# and its hundreds of requests from one client would meet the rate limits (tested on their own in
# test_cloud_hardening.py).
DOCS_NO_LIMITS = {"server": {"api_docs": True},
                  "limits": {"source_per_min": 0, "device_per_min": 0, "enrol_per_min": 0}}


@pytest.fixture
def enrolled(cloud):
    cloud.reconfigure(DOCS_NO_LIMITS)
    return cloud, cloud.enrol()


def test_oversized_and_malformed_requests_get_4xx(cloud):
    big = b'{"token": "' + b"a" * 100_000 + b'", "public_key": "x"}'
    assert cloud.http.post("/v1/enrol", content=big, headers={"content-type": "application/json"}).status_code == 413

    def chunks():  # no Content-Length: the limit counts what arrives
        for _ in range(40):
            yield b"a" * 1024
    r = cloud.http.post("/v1/enrol", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json() == {"error": "too-large"}
    assert cloud.http.post("/v1/enrol", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    r = cloud.http.post("/v1/enrol", json={"token": "x"})
    assert (r.status_code, r.json()) == (422, {"error": "malformed"})
    assert cloud.http.post("/v1/enrol", json=[1, 2]).status_code == 422
    assert cloud.http.post("/v1/enrol", json={"token": "x" * 300, "public_key": "y"}).status_code == 422
    assert "x" * 50 not in cloud.http.post("/v1/enrol", json={"token": "x" * 300, "public_key": "y"}).text
    for headers in ({"X-TP-Device": "a", "X-TP-Timestamp": "nope", "X-TP-Nonce": "z", "X-TP-Signature": "!!"},
                    {"X-TP-Device": "a" * 500, "X-TP-Timestamp": "1" * 40, "X-TP-Nonce": "0" * 32,
                     "X-TP-Signature": "AAAA"},
                    {"X-TP-Device": "mfp", "X-TP-Timestamp": "-5", "X-TP-Nonce": "0" * 32, "X-TP-Signature": "A"}):
        assert cloud.http.get("/v1/orgs/acme/profile", headers=headers).status_code == 401
    assert cloud.http.get("/v1/nothing").status_code == 404
    assert cloud.http.delete("/v1/enrol").status_code == 405
    cloud.reconfigure(DOCS_NO_LIMITS)
    assert cloud.http.get("/openapi.json").json()["paths"].keys() >= {"/v1/enrol", "/v1/orgs/{org_id}/profile"}


def test_fuzzed_requests_never_get_5xx(enrolled):
    """Every operation of the OpenAPI schema, fuzzed by schemathesis (cases from the schema, sent to
    the app in process); plus validly signed lookups of fuzzed org ids."""
    from hypothesis import given, strategies as st

    from hal.directory.client import load_key
    from hal.directory.signing import sign_headers

    cloud, dev = enrolled
    api = schemathesis.openapi.from_asgi("/openapi.json", cloud.app)
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 3
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            response = case.call()
            assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code}"
        fuzz()

    key = load_key(dev.key_path)

    @given(org=st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#%"), min_size=1, max_size=80))
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def signed(org):
        path = f"/v1/orgs/{org}/profile"
        r = cloud.http.get(path, headers=sign_headers(key, dev.device_id, "GET", path, b""))
        assert r.status_code in (200, 401, 403, 404), (org, r.status_code)
        if org not in ("acme", "globex"):
            assert r.status_code != 200
    signed()


def _cli(capsys, cloud, *args) -> tuple[int, str]:
    from cloud.cli import main
    rc = main(["--db", cloud.db_url, "--kek-file", str(cloud.kek_file), *args])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_cli_manages_the_directory_and_never_prints_secrets(cloud, capsys, tmp_path):
    profile = tmp_path / "p.json"
    from conftest import wire_profile
    wire = wire_profile("umbrella")
    profile.write_text(json.dumps(wire))
    assert _cli(capsys, cloud, "org", "add", "umbrella")[0] == 0
    rc, out = _cli(capsys, cloud, "org", "set-profile", "umbrella", str(profile))
    assert rc == 0 and "version 1" in out
    rc, out = _cli(capsys, cloud, "contract", "add", "--org", "umbrella", "--space", "space-1")
    assert rc == 0
    for args in (["org", "show", "umbrella"], ["org", "show", "umbrella", "--json"], ["org", "list"],
                 ["audit", "--org", "umbrella", "--json"], ["contract", "list", "--org", "umbrella"]):
        rc, out = _cli(capsys, cloud, *args)
        assert rc == 0 and "umbrella" in out and CANARY not in out, args
    shown = json.loads(_cli(capsys, cloud, "org", "show", "umbrella", "--json")[1])
    assert shown["profile"]["secrets_set"] == ["vpn.psk", "auth.secret"]
    assert "psk" not in shown["profile"]["public"]["vpn"]
    # an invalid profile is refused naming the field, not the value
    wire["vpn"]["dpd_delay_s"] = 0
    profile.write_text(json.dumps(wire))
    rc, out = _cli(capsys, cloud, "org", "set-profile", "umbrella", str(profile))
    assert rc == 1 and "dpd_delay_s" in out and CANARY not in out
    wire = wire_profile("umbrella")
    wire["org_id"] = "acme"
    profile.write_text(json.dumps(wire))
    assert _cli(capsys, cloud, "org", "set-profile", "umbrella", str(profile))[0] == 1
    rc, out = _cli(capsys, cloud, "device", "enrol-token", "--space", "space-1", "--device", "mfp-9", "--json")
    assert rc == 0 and len(json.loads(out)["token"]) >= 40
    assert _cli(capsys, cloud, "device", "revoke", "mfp-none")[0] == 1
    rc, out = _cli(capsys, cloud, "contract", "end", "--org", "umbrella", "--space", "space-1")
    assert rc == 0
    rc, out = _cli(capsys, cloud, "rotate-key", "--json")
    assert rc == 0 and json.loads(out)["rewrapped"] == 4
    rc, out = _cli(capsys, cloud, "audit", "--since", "2000-01-01T00:00:00", "--limit", "5")
    assert rc == 0 and len(out.strip().splitlines()) == 6
