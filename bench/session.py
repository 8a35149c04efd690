"""`python -m bench.session [--runs 20] [--wan-rtt-ms N]`: what a person at the MFP waits for, on the
whole system in the lab (real pcscd, cloud, charon, cupsd, RADIUS, desk CUPS).

- tap -> ready:            the card is presented -> the firmware is ready (profile fetched, tunnel up,
                           session print service up); includes pcscd's 0-400 ms vpcd poll
- tap -> desk queue:       the card is presented -> the org's desk PC has a trusted MFP queue
- owner tap -> document:   the owner's card is presented -> the held job's document at the engine
- gateway kill -> purged:  the org's gateway is SIGKILLed -> the firmware is idle again, purge verified
                           (dead-peer detection dominates: a few seconds)

Lab prefix `TP_LAB_PREFIX` (default `tpbs`); the lab is brought up and down by the benchmark.
"""

from __future__ import annotations

import argparse
import os
import time

from bench.stats import summary, table, write
from lab.poll import wait_for

DOC = "/usr/share/cups/data/default-testpage.pdf"


def run(runs: int, wan_rtt_ms: float, kills: int) -> dict:
    os.environ.setdefault("TP_LAB_PREFIX", "tpbs")
    from lab import actions
    from lab.lab import Lab
    from lab.options import LabOptions
    from lab.services import org_agents
    from lab.services.engine import printed_documents
    from lab.services.firmware import firmware_status
    from lab.vcard import VirtualCard
    from org.desk_agent import trusted_model

    lab = Lab(options=LabOptions(wan_rtt_ms=wan_rtt_ms))
    lab.down()
    lab = Lab(options=LabOptions(wan_rtt_ms=wan_rtt_ms))
    lab.up()
    card = VirtualCard(lab)
    fw = lab.service("firmware")

    def desk_queue() -> bool:
        return any(q["accepting"] and trusted_model(q["model"]) for q in org_agents.desk_queues(lab, "acme").values())

    def tap(user: str, until) -> float:
        t0 = time.monotonic()
        card.insert(actions.default_uid("acme", user), user=user, org="acme")
        try:
            wait_for(until, 30, "the tap to take effect", 0.005)
        finally:
            card.remove()
        elapsed = time.monotonic() - t0
        wait_for(lambda: not card.status().get("connected"), 5, "the card removed", 0.005)
        return elapsed

    to_ready, to_queue, to_doc, to_purge = [], [], [], []
    try:
        for _ in range(runs):
            to_ready.append(tap("alice", lambda: firmware_status(lab)["state"] == "ready"))
            t_ready = time.monotonic()
            wait_for(desk_queue, 30, "the desk queue", 0.005)
            to_queue.append(to_ready[-1] + time.monotonic() - t_ready)
            org_agents.print_file(lab, "acme", "alice", DOC)
            wait_for(lambda: firmware_status(lab)["held_jobs"], 30, "the held job", 0.005)
            n = len(printed_documents(lab))
            time.sleep(0.45)  # let pcscd see the card gone before the next tap
            to_doc.append(tap("alice", lambda: len(printed_documents(lab)) > n))
            fw.stop(lab)  # SIGTERM: the daemon purges the session and exits
            fw.start(lab)
            wait_for(lambda: not desk_queue(), 30, "the desk queue to go", 0.005)
        for _ in range(kills):
            tap("alice", lambda: firmware_status(lab)["state"] == "ready")
            t0 = time.monotonic()
            actions.fault(lab, "gateway-kill", "acme")
            wait_for(lambda: firmware_status(lab)["state"] == "idle", 30, "the purge", 0.005)
            to_purge.append(time.monotonic() - t0)
            actions.fault(lab, "gateway-start", "acme")
    finally:
        lab.down()
    return {"wan_rtt_ms": wan_rtt_ms, "tap_to_ready": summary(to_ready), "tap_to_desk_queue": summary(to_queue),
            "owner_tap_to_document": summary(to_doc), "gateway_kill_to_purged": summary(to_purge)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.session")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--wan-rtt-ms", type=float, default=0.0)
    args = p.parse_args(argv)
    results = run(args.runs, args.wan_rtt_ms, args.kills)
    print(table(results))
    suffix = f"-rtt{int(args.wan_rtt_ms)}" if args.wan_rtt_ms else ""
    print(f"-> {write('session' + suffix, results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
