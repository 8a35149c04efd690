"""The gateway's reports to the cloud: a duplicate IKE SA with a device's identity (issue 18).

In certificate mode the gateway agent keeps the first IKE SA per device identity and ends any other
(org/gateway_agent.py `duplicates`): a second SA with the MFP's identity means a copy of its key
and certificate at work somewhere else. The agent tells the cloud, which audits it as an anomaly of
that device (`tenantprint cloud audit`), next to the cloud's own anomalies (new source address,
changed IKE key):

    POST /v1/orgs/<org>/duplicate-sa    {"device_id": "mfp-1.space-1", "remote_host": "10.77.0.20", "at": 1764...}

The request is signed with the gateway's own key, the one its IKE certificate is for (issued by the
org's CA, `org/gateway_certs.py`); the cloud knows that CA and the gateway's identity from the
org's certificate-mode profile and trusts nothing else (cloud/gateway_reports.py). Four headers:

    X-TP-Gateway-Cert  the gateway's certificate, base64 DER
    X-TP-Timestamp     unix seconds when it was signed
    X-TP-Nonce         32 lowercase hex characters, never reused
    X-TP-Signature     base64 DER ECDSA-SHA256 over `signed_message(...)`

`Reporter` sends them from a thread of its own, so the agent's reconcile never waits on the cloud:
at most `QUEUE_MAX` reports wait, each is tried until `GIVE_UP_S` with growing pauses; what cannot
be sent is logged (the gateway's own log keeps every duplicate anyway).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import queue
import secrets
import ssl
import threading
import time
import urllib.error
import urllib.request

from org.gateway_certs import GatewayKey

log = logging.getLogger("tenantprint.org.gateway_report")

VERSION = "TP-GW-1"
H_CERT, H_TIMESTAMP, H_NONCE, H_SIGNATURE = "X-TP-Gateway-Cert", "X-TP-Timestamp", "X-TP-Nonce", "X-TP-Signature"
DUPLICATE_PATH = "/v1/orgs/{org}/duplicate-sa"
QUEUE_MAX = 100
GIVE_UP_S = 3600.0


def signed_message(method: str, path: str, body: bytes, timestamp: int, nonce: str, org_id: str) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((VERSION, method.upper(), path, digest, str(timestamp), nonce, org_id)).encode()


def sign_headers(gateway: GatewayKey, org_id: str, method: str, path: str, body: bytes, *,
                 now: float | None = None, nonce: str | None = None) -> dict[str, str]:
    """The four headers of one report by `org_id`'s gateway (its certificate and key)."""
    ts = int(time.time() if now is None else now)
    nonce = nonce or secrets.token_hex(16)
    sig = gateway.sign(signed_message(method, path, body, ts, nonce, org_id))
    return {H_CERT: gateway.cert_b64, H_TIMESTAMP: str(ts), H_NONCE: nonce, H_SIGNATURE: base64.b64encode(sig).decode()}


def duplicate_body(device_id: str, remote_host: str, at: float) -> bytes:
    return json.dumps({"device_id": device_id, "remote_host": remote_host, "at": round(at, 3)}).encode()


class Reporter:
    """Sends duplicate-SA reports of `org_id`'s gateway to the cloud at `base_url` (https)."""

    def __init__(self, base_url: str, org_id: str, gateway: GatewayKey, *, cloud_ca: str | None = None,
                 timeout: float = 10.0):
        if not base_url.startswith("https://"):
            raise ValueError("the cloud's URL must be https")
        self.gateway = gateway
        self.base_url, self.org_id, self.timeout = base_url.rstrip("/"), org_id, timeout
        self._ctx = ssl.create_default_context(cafile=cloud_ca)
        self._queue: queue.Queue = queue.Queue(QUEUE_MAX)
        self.sent = 0

    def duplicate(self, device_id: str, remote_host: str, at: float | None = None) -> None:
        """Queue one report (never blocks; a full queue drops it, logged)."""
        try:
            self._queue.put_nowait((device_id, remote_host, time.time() if at is None else at))
        except queue.Full:
            log.warning("duplicate-SA report for %s not queued: %d reports wait already", device_id, QUEUE_MAX)

    def start(self) -> "Reporter":
        threading.Thread(target=self._run, name="cloud-report", daemon=True).start()
        return self

    def send(self, device_id: str, remote_host: str, at: float) -> int:
        """POST one report now; the HTTP status (urllib errors other than HTTP ones propagate)."""
        path = DUPLICATE_PATH.format(org=self.org_id)
        body = duplicate_body(device_id, remote_host, at)
        headers = sign_headers(self.gateway, self.org_id, "POST", path, body)
        req = urllib.request.Request(self.base_url + path, data=body, method="POST",
                                     headers={**headers, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ctx) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def _run(self) -> None:
        while True:
            device_id, host, at = self._queue.get()
            pause = 1.0
            while True:
                try:
                    status = self.send(device_id, host, at)
                except (OSError, ValueError) as exc:
                    status, why = None, type(exc).__name__
                else:
                    why = f"HTTP {status}"
                if status == 201:
                    self.sent += 1
                    log.info("duplicate IKE SA of %s reported to the cloud", device_id)
                    break
                if status is not None and 400 <= status < 500 and status != 429:
                    log.warning("the cloud refused the duplicate-SA report of %s (%s)", device_id, why)
                    break
                if time.time() - at > GIVE_UP_S:
                    log.warning("duplicate-SA report of %s not delivered within %d s (%s): given up",
                                device_id, GIVE_UP_S, why)
                    break
                time.sleep(pause)
                pause = min(pause * 2, 60.0)
