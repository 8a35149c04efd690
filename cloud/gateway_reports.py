"""Reports of an org's gateway: a duplicate IKE SA with a device's identity, audited as an anomaly.

`POST /v1/orgs/<org>/duplicate-sa` (format and signature: org/gateway_report.py). The cloud
believes a report only when it is signed by that org's gateway as the org's certificate-mode
profile describes it: the certificate in the request is issued by the profile's `vpn.ca_cert_pem`
(the org's CA), is current, is not a CA, and names the profile's `vpn.remote_id` (the gateway's
IKE identity) in its subjectAltName; the signature verifies with it; the timestamp is within the
window and the nonce was not seen in it (each API process remembers the nonces of the window).
An org whose profile is not in certificate mode has no gateway the cloud can recognise: nothing is
accepted for it.

A believed report adds one audit event, `anomaly`/`duplicate-ike-sa`, with the device (one of the
space's enrolled devices, else 422) and the org, and the duplicate SA's remote address as the
source. Everything else is a refusal that proves nothing: counted (cloud/refusals.py), never an
audit row, never attributed to a device.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import json
import threading
import time

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, select

from cloud.anomalies import exact_source
from cloud.audit_log import audit
from cloud.lookup import Refused, Unauthenticated
from cloud.models import Device, OrgProfile
from cloud.storage import read_txn, write_txn
from hal.directory.signing import DEVICE_ID_RE, NONCE_RE
from org.gateway_certs import NotTheGateway, cert_from_header, verify_gateway_cert
from org.gateway_report import H_CERT, H_NONCE, H_SIGNATURE, H_TIMESTAMP, signed_message

MAX_CERT = 8192
NONCES_MAX = 100_000


class GatewayReports:
    def __init__(self, engine: Engine, *, window_s: int = 60, clock=time.time):
        self.engine, self.window_s, self.clock = engine, window_s, clock
        self._nonces: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def duplicate(self, org_id: str, headers, method: str, path: str, body: bytes, host: str | None) -> str:
        """Check and record one duplicate-SA report; the device id audited. `Unauthenticated` (its
        reason one of cloud/refusals.py's) for a report the org's gateway did not sign, `Refused`
        ("malformed") for a signed one that makes no sense."""
        now = self.clock()
        gateway = self._gateway(org_id)
        cert = self._certificate(headers, gateway, now)
        ts, nonce = self._verify(cert, headers, method, path, body, org_id, now)
        try:
            report = json.loads(body)
            device_id, remote_host, at = report["device_id"], report["remote_host"], float(report["at"])
            if not (isinstance(device_id, str) and DEVICE_ID_RE.match(device_id) and isinstance(remote_host, str)):
                raise ValueError
            ipaddress.ip_address(remote_host)
        except (ValueError, KeyError, TypeError):
            raise Refused("malformed") from None
        self._spend(org_id, nonce, ts, now)
        with write_txn(self.engine) as conn:
            if conn.execute(select(Device.id).where(Device.id == device_id)).first() is None:
                raise Refused("malformed")
            audit(conn, "anomaly", "duplicate-ike-sa", device_id=device_id, org_id=org_id,
                  at=min(at, now) if at > now - 86400 else now, source=exact_source(remote_host))
        return device_id

    def _gateway(self, org_id: str) -> tuple[x509.Certificate, str]:
        """(the org's CA, the gateway's identity) from the org's certificate-mode profile."""
        with read_txn(self.engine) as conn:
            row = conn.execute(select(OrgProfile.public_json).where(OrgProfile.org_id == org_id)).first()
        vpn = json.loads(row.public_json).get("vpn", {}) if row is not None else {}
        if vpn.get("auth") != "device" or not vpn.get("ca_cert_pem") or not vpn.get("remote_id"):
            raise Unauthenticated("bad-certificate")  # no gateway the cloud could recognise
        try:
            return x509.load_pem_x509_certificate(vpn["ca_cert_pem"].encode()), vpn["remote_id"]
        except ValueError:
            raise Unauthenticated("bad-certificate") from None

    def _certificate(self, headers, gateway: tuple[x509.Certificate, str], now: float) -> x509.Certificate:
        ca, identity = gateway
        raw = headers.get(H_CERT)
        if not raw:
            raise Unauthenticated("missing-headers")
        try:
            if len(raw) > MAX_CERT:
                raise ValueError
            cert = cert_from_header(raw)
        except ValueError:
            raise Unauthenticated("malformed-headers") from None
        try:
            verify_gateway_cert(cert, ca, identity, dt.datetime.fromtimestamp(now, dt.timezone.utc))
        except NotTheGateway:
            raise Unauthenticated("bad-certificate") from None  # e.g. the org CA's RADIUS server certificate
        return cert

    def _verify(self, cert: x509.Certificate, headers, method: str, path: str, body: bytes, org_id: str,
                now: float) -> tuple[int, str]:
        ts_raw, nonce, sig_raw = headers.get(H_TIMESTAMP), headers.get(H_NONCE), headers.get(H_SIGNATURE)
        if not ts_raw or not nonce or not sig_raw:
            raise Unauthenticated("missing-headers")
        if not ts_raw.isdigit() or len(ts_raw) > 12 or not NONCE_RE.match(nonce):
            raise Unauthenticated("malformed-headers")
        try:
            sig = base64.b64decode(sig_raw, validate=True)
        except (ValueError, binascii.Error):
            raise Unauthenticated("malformed-signature") from None
        ts = int(ts_raw)
        try:
            cert.public_key().verify(sig, signed_message(method, path, body, ts, nonce, org_id),
                                     ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise Unauthenticated("bad-signature") from None
        if abs(now - ts) > self.window_s:
            raise Unauthenticated("stale-request")
        return ts, nonce

    def _spend(self, org_id: str, nonce: str, ts: int, now: float) -> None:
        with self._lock:
            if len(self._nonces) >= NONCES_MAX or len(self._nonces) % 1000 == 0:
                self._nonces = {k: t for k, t in self._nonces.items() if t > now - 2 * self.window_s}
            if (org_id, nonce) in self._nonces or len(self._nonces) >= NONCES_MAX:
                raise Unauthenticated("stale-request")
            self._nonces[(org_id, nonce)] = ts

