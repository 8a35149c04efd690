"""The gateway agent's answers to the desks, signed by the gateway (issue 18: the desk trusts only
the MFP its org's gateway authenticated).

The desk agents read two answers of the gateway agent: its MFP listing (which MFPs the gateway's
IKE authenticated, by the identity their certificate proved, and at which virtual address: the
desk adds a queue for each) and the outcomes of released jobs (the desk then lets its copy of a
job go). Anyone on the org's LAN who can answer in the gateway agent's place could otherwise give a
desk a "listing" that points a queue at a print service of their own, or an outcome that makes it
drop a copy. So in certificate mode the gateway agent signs every answer with the gateway's own key
(the one its IKE certificate is for, issued by the org's CA, `org/gateway_certs.py`), and a desk
agent given the org's CA and the gateway's identity (`--gateway-ca`, `--gateway-id`) takes no
answer that is not so signed:

    X-TP-Gateway-Cert        the gateway's certificate, base64 DER
    X-TP-Answer-Signature    base64 DER ECDSA-SHA256 over VERSION, the request's path and query,
                             and the SHA-256 of the body

The body carries `at`, the gateway's time when it answered; a desk refuses an answer more than
`MAX_SKEW_S` away from its own clock (an old listing replayed). The signature binds the path and
query, so an answer to one request (the outcomes, another `after`) does not pass for another.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import time

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from org.gateway_certs import GatewayKey, NotTheGateway, cert_from_header, verify_gateway_cert
from org.gateway_report import H_CERT

VERSION = "TP-ANS-1"
H_ANSWER_SIGNATURE = "X-TP-Answer-Signature"
MAX_SKEW_S = 60.0


class AnswerNotSigned(ValueError):
    """An answer that is not the org gateway's (unsigned, another signer, altered, stale)."""


def signed_message(path: str, body: bytes) -> bytes:
    return "\n".join((VERSION, path, hashlib.sha256(body).hexdigest())).encode()


class AnswerSigner:
    """The gateway agent's side: the gateway's certificate and key."""

    def __init__(self, gateway: GatewayKey):
        self.gateway = gateway

    def headers(self, path: str, body: bytes) -> dict[str, str]:
        sig = self.gateway.sign(signed_message(path, body))
        return {H_CERT: self.gateway.cert_b64, H_ANSWER_SIGNATURE: base64.b64encode(sig).decode()}


class AnswerVerifier:
    """The desk agent's side: the org's CA (PEM) and the gateway's identity."""

    def __init__(self, ca_pem: bytes, gateway_id: str, *, clock=time.time):
        self.ca = x509.load_pem_x509_certificate(ca_pem)
        self.gateway_id, self.clock = gateway_id, clock
        self._known: tuple[str, ec.EllipticCurvePublicKey, float] | None = None  # (cert b64, key, not after)

    @classmethod
    def from_files(cls, ca_file: str, gateway_id: str) -> "AnswerVerifier":
        with open(ca_file, "rb") as f:
            return cls(f.read(), gateway_id)

    def _key(self, cert_b64: str, now: float) -> ec.EllipticCurvePublicKey:
        known = self._known
        if known is not None and known[0] == cert_b64 and now <= known[2]:
            return known[1]
        try:
            cert = cert_from_header(cert_b64)
        except ValueError:
            raise AnswerNotSigned("the gateway certificate header is not a certificate") from None
        try:
            key = verify_gateway_cert(cert, self.ca, self.gateway_id, dt.datetime.fromtimestamp(now, dt.timezone.utc))
        except NotTheGateway as exc:
            raise AnswerNotSigned(f"the answer's certificate is not the gateway's: {exc}") from None
        self._known = (cert_b64, key, cert.not_valid_after_utc.timestamp())
        return key

    def check(self, path: str, body: bytes, headers) -> dict:
        """The answer's JSON object when the gateway signed it for `path` and it is fresh, else
        AnswerNotSigned (`headers`: anything with `.get`, e.g. an HTTP response's)."""
        cert_b64, sig_b64 = headers.get(H_CERT), headers.get(H_ANSWER_SIGNATURE)
        if not cert_b64 or not sig_b64:
            raise AnswerNotSigned("the answer is not signed")
        now = self.clock()
        key = self._key(cert_b64, now)
        try:
            key.verify(base64.b64decode(sig_b64, validate=True), signed_message(path, body), ec.ECDSA(hashes.SHA256()))
        except (ValueError, binascii.Error, InvalidSignature):
            raise AnswerNotSigned("the answer's signature does not verify with the gateway's key") from None
        doc = json.loads(body)
        at = doc.get("at") if isinstance(doc, dict) else None
        if not isinstance(at, (int, float)) or abs(now - at) > MAX_SKEW_S:
            raise AnswerNotSigned("the answer is not fresh (its time is missing or too far from ours)")
        return doc
