"""`tenantprint lab demo` (and `make demo`): the whole story on one machine, narrated.

Brings the lab up, then: alice of acme taps (tunnel into acme, the desk PC gets the queue), prints
from her desk, the job waits; bob taps and is refused alice's job; alice taps again and her job
prints; a coworker tries to print straight at the MFP and nothing prints; acme's gateway dies and
the MFP purges acme; globex's grace taps into the same LAN range and finds nothing of acme. Ends
with what was printed and the proof of the purge. Leaves the lab up for a look around
(`tenantprint lab status`, `tenantprint lab down`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from lab import actions
from lab.poll import wait_for


def _say(out, text: str) -> None:
    print(f"\n== {text}", file=out, flush=True)


def _show(out, label: str, value) -> None:
    print(f"   {label}: {json.dumps(value, default=str)}", file=out, flush=True)


def run(lab, out) -> dict:
    _say(out, "Bringing the lab up: cloud, two organizations (gateway, RADIUS, desk PC), the MFP")
    lab.up()
    doc = Path(tempfile.mkdtemp()) / "quarterly-report.pdf"
    shutil.copy("/usr/share/cups/data/default-testpage.pdf", doc)  # a real one-page PDF

    url = actions.status(lab)["firmware"].get("panel_url")
    _say(out, "The MFP's panel, live (on the MFP host's loopback only): open it in a browser there with")
    _show(out, "panel", f"ip netns exec {lab.host('office').ns} chromium --no-sandbox --app={url}")
    _show(out, "or read it", "tenantprint lab panel screen")

    _say(out, "alice (acme) taps her card: the MFP fetches acme's profile and tunnels into acme's LAN")
    st = actions.tap(lab, "acme", "alice")
    _show(out, "firmware", {k: st[k] for k in ("state", "org", "panel", "tunnel")})
    wait_for(lambda: actions.status(lab)["desks"]["acme"]["queue"], 20, "acme's desk queue")
    _show(out, "acme desk PC has the MFP queue", True)

    _say(out, "alice prints from her desk PC: the job crosses the tunnel and is held")
    actions.print_file(lab, "acme", "alice", str(doc))
    st = wait_for(lambda: (s := actions.status(lab)["firmware"]).get("held_jobs") and s, 20, "the held job")
    _show(out, "held", st["held_jobs"])

    _say(out, "bob (acme, PIN user) taps: his PIN is checked by acme's RADIUS, alice's job stays held")
    st = actions.tap(lab, "acme", "bob", pin="2468")
    _show(out, "panel", st["panel"])
    _show(out, "still held", [j["user"] for j in st["held_jobs"]])

    _say(out, "grace (globex) taps while alice's job waits: globex gets a sandbox of its own beside acme's, "
              "with the same LAN range 10.20.0.0/24")
    actions.tap(lab, "globex", "grace")
    st = wait_for(lambda: (s := actions.status(lab))["desks"]["globex"]["queue"] and s, 30, "globex's desk queue")
    _show(out, "sessions", {org: {"state": v["state"], "sandbox": v["tunnel"]["sandbox"], "held": len(v["held_jobs"])}
                            for org, v in st["firmware"]["sessions"].items()})
    _show(out, "both desks show the MFP", {org: st["desks"][org]["queue"] for org in ("acme", "globex")})

    _say(out, "a coworker prints straight at the MFP, claiming to be alice")
    _show(out, "cowork", actions.print_file(lab, "acme", "alice", str(doc), origin="cowork"))

    _say(out, "alice taps again: acme's RADIUS says yes, her job prints")
    st = actions.tap(lab, "acme", "alice")
    _show(out, "panel", st["panel"])
    printed = wait_for(lambda: actions.status(lab)["printed"], 20, "the document at the engine")
    _show(out, "printed", printed)

    _say(out, "acme's VPN gateway dies: dead-peer detection, acme's desk drops the queue, the MFP purges acme's "
              "sandbox and nothing else")
    actions.fault(lab, "gateway-kill", "acme")
    st = wait_for(lambda: (s := actions.status(lab))["firmware"]["sessions"].keys() == {"globex"} and s, 30, "the purge")
    _show(out, "sessions", sorted(st["firmware"]["sessions"]))
    _show(out, "acme desk queue", st["desks"]["acme"]["queue"])
    _show(out, "globex desk queue", st["desks"]["globex"]["queue"])
    scan = actions.scan_secrets(lab)  # globex's session is open: its keeper holds globex's secrets, rightly
    acme_left = [f for f in scan["findings"] if any("acme" in c for c in f["canaries"])]
    _show(out, "acme secrets left on the MFP", acme_left or "none")
    actions.fault(lab, "gateway-start", "acme")

    final = actions.status(lab)
    _say(out, "Done. The lab stays up: `tenantprint lab status`, `tenantprint lab down`.")
    return {"printed": final["printed"], "acme_left_after_purge": acme_left, "firmware": final["firmware"]}
