"""The gateway agent's answers signed for the desks (org/answer_signature.py): a desk takes an
answer only when the org's gateway signed it, for this request, recently."""

from __future__ import annotations

import json
import time

import pytest

from org.answer_signature import MAX_SKEW_S, AnswerNotSigned, AnswerSigner, AnswerVerifier
from org.gateway_certs import GatewayKey, issue_gateway_cert, make_ca

PATH = "/v1/mfps?after=3&wait=20"


@pytest.fixture(scope="module")
def org():
    ca = make_ca("acme")
    return ca, issue_gateway_cert(ca, "gw.acme")


def _signer(tmp_path, ident) -> AnswerSigner:
    cert, key = tmp_path / "gw.pem", tmp_path / "gw.key"
    cert.write_text(ident.cert_pem())
    key.write_bytes(ident.key_pem())
    return AnswerSigner(GatewayKey.from_files(str(cert), str(key)))


def _verifier(ca) -> AnswerVerifier:
    return AnswerVerifier(ca.cert_pem().encode(), "gw.acme")  # the real clock: the certificates are current


def _answer(at: float) -> bytes:
    return json.dumps({"version": 4, "mfps": [{"id": "mfp-1.space-1", "virtual_ip": "10.20.0.200"}], "at": at}).encode()


def test_the_gateways_answer_passes(tmp_path, org):
    ca, gw = org
    body = _answer(time.time())
    doc = _verifier(ca).check(PATH, body, _signer(tmp_path, gw).headers(PATH, body))
    assert doc["mfps"][0]["id"] == "mfp-1.space-1"


@pytest.mark.parametrize("case", ["unsigned", "other-ca", "radius-cert", "altered", "other-path", "stale",
                                  "no-time", "junk-cert"])
def test_anything_else_is_refused(tmp_path, org, case):
    ca, gw = org
    now = time.time()
    body = _answer(now)
    signer = _signer(tmp_path, gw)
    path = PATH
    if case == "other-ca":
        signer = _signer(tmp_path, issue_gateway_cert(make_ca("acme"), "gw.acme"))
    elif case == "radius-cert":
        signer = _signer(tmp_path, issue_gateway_cert(ca, "10.20.0.50"))
    elif case == "stale":
        body = _answer(now - MAX_SKEW_S - 5)
    elif case == "no-time":
        body = json.dumps({"version": 4, "mfps": []}).encode()
    headers = {} if case == "unsigned" else signer.headers(path, body)
    if case == "altered":
        body = body.replace(b"10.20.0.200", b"10.20.0.66")
    if case == "other-path":
        path = "/v1/outcomes?after=3&wait=20"
    if case == "junk-cert":
        headers["X-TP-Gateway-Cert"] = "bm90IGEgY2VydA=="
    with pytest.raises(AnswerNotSigned):
        _verifier(ca).check(path, body, headers)
