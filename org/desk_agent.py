"""The desk agent: keeps the desk PC's CUPS in step with the MFPs the org's gateway reports (claims 1, 4).

It long-polls the gateway agent. For every MFP that is up it adds an IPP Everywhere queue pointing at
the MFP's virtual IP, and trusts it only once CUPS really built a model for it (`lpadmin -m everywhere`
"succeeds" even when the MFP is unreachable, leaving a "Remote Printer" with no PPD); for every MFP
that went away it deletes the queue, which also drops the desk's pending jobs for it. When the gateway
agent cannot be reached for `grace_s`, the MFPs are treated as gone: no queue to a printer whose tunnel
nobody can vouch for.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import cups

log = logging.getLogger("tenantprint.org.desk_agent")

QUEUE_PREFIX = "tenantprint-"
_UNTRUSTED_MODELS = ("", "Remote Printer", "Local Raw Printer", "Unknown")


@dataclass(frozen=True)
class WantedQueue:
    name: str
    uri: str
    mfp_id: str


def wanted_queues(mfps: list[dict], mfp_queue: str, port: int = 631) -> dict[str, WantedQueue]:
    """Pure: the desk queues that should exist for the gateway's MFP list."""
    out = {}
    for m in mfps:
        name = QUEUE_PREFIX + re.sub(r"[^A-Za-z0-9_-]", "_", m["id"] or m["virtual_ip"])[:100]
        out[name] = WantedQueue(name, f"ipp://{m['virtual_ip']}:{port}/printers/{mfp_queue}", m["id"])
    return out


class QueueNotTrusted(Exception):
    """CUPS added the queue but could not build a model from the MFP: it was deleted again."""


class DeskAgent:
    def __init__(self, gateway_url: str, cups_server: str, mfp_queue: str = "tenantprint",
                 grace_s: float = 3.0, verify_s: float = 10.0):
        self.gateway_url = gateway_url.rstrip("/")
        self.cups_server = cups_server
        self.mfp_queue = mfp_queue
        self.grace_s = grace_s
        self.verify_s = verify_s
        self.version: int | None = None
        self.last_contact = time.monotonic()

    def _cups(self) -> cups.Connection:
        cups.setServer(self.cups_server)
        return cups.Connection()

    def current_queues(self) -> dict[str, str]:
        conn = self._cups()
        return {name: attrs.get("device-uri", "") for name, attrs in conn.getPrinters().items()
                if name.startswith(QUEUE_PREFIX)}

    def add_queue(self, q: WantedQueue) -> None:
        conn = self._cups()
        conn.addPrinter(q.name, device=q.uri, ppdname="everywhere",
                        info="Shared office printer (tenantprint)", location=q.mfp_id)
        deadline = time.monotonic() + self.verify_s
        model = ""
        while time.monotonic() < deadline:
            model = conn.getPrinterAttributes(q.name, requested_attributes=["printer-make-and-model"]).get(
                "printer-make-and-model", "")
            if model not in _UNTRUSTED_MODELS:
                break
            time.sleep(0.2)
        if model in _UNTRUSTED_MODELS:
            conn.deletePrinter(q.name)
            raise QueueNotTrusted(f"{q.name}: CUPS built no model from {q.uri} (got {model!r})")
        conn.enablePrinter(q.name)
        conn.acceptJobs(q.name)
        log.info("queue added name=%s uri=%s model=%r", q.name, q.uri, model)

    def delete_queue(self, name: str) -> None:
        self._cups().deletePrinter(name)
        log.info("queue removed name=%s", name)

    def reconcile(self, mfps: list[dict]) -> None:
        want = wanted_queues(mfps, self.mfp_queue)
        have = self.current_queues()
        for name, uri in have.items():
            if name not in want or want[name].uri != uri:
                self.delete_queue(name)
        for name, q in want.items():
            if name not in have or have[name] != q.uri:
                try:
                    self.add_queue(q)
                except (QueueNotTrusted, cups.IPPError) as exc:
                    log.warning("queue not added: %s", exc)

    def poll_once(self, wait: float = 20.0) -> None:
        url = f"{self.gateway_url}/v1/mfps"
        if self.version is not None:
            url += f"?after={self.version}&wait={wait}"
        try:
            with urllib.request.urlopen(url, timeout=wait + 5) as resp:
                body = json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            if time.monotonic() - self.last_contact > self.grace_s and self.current_queues():
                log.warning("gateway agent unreachable (%s): removing MFP queues", exc)
                self.reconcile([])
                self.version = None
            time.sleep(0.5)
            return
        self.last_contact = time.monotonic()
        if body.get("version") != self.version:
            self.version = body["version"]
            self.reconcile(body.get("mfps", []))

    def run_forever(self) -> None:
        while True:
            self.poll_once()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="tenantprint org desk-agent")
    p.add_argument("--gateway", required=True, help="the gateway agent's URL, e.g. http://10.20.0.1:8631")
    p.add_argument("--cups", default="/run/cups/cups.sock", help="the desk's CUPS server (socket or host)")
    p.add_argument("--mfp-queue", default="tenantprint", help="the MFP's inbound queue name")
    p.add_argument("--grace", type=float, default=3.0, help="seconds without the gateway before queues go")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    DeskAgent(args.gateway, args.cups, args.mfp_queue, args.grace).run_forever()
    return 0
