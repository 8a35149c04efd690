"""`python -m bench.tunnel [--runs 20] [--kill-runs 5]`: tunnel latencies on the lab's real charons.

- up:          profile in hand -> `Tunnel.up` returned TunnelUp (virtual IP on its interface)
- purge:       after `down()`, `purge()` until charon's inventory is verified empty
- kill_down:   gateway charon SIGKILLed -> `TunnelDown` from `events()` (dead-peer detection)
- down_purge:  that TunnelDown -> purge verified

Uses the lab prefix `TP_LAB_PREFIX` (default `tpb`); brings the lab up if needed and down again if
it did. Writes bench/results/tunnel.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import threading
import time
from pathlib import Path

from bench.stats import summary as _stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.tunnel")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--kill-runs", type=int, default=5)
    ap.add_argument("--org", default="acme")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "tunnel.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("TP_LAB_PREFIX", "tpb")

    from hal.directory.profile import SessionProfile
    from hal.tunnel import TunnelConfig, TunnelDown, open_tunnel
    from lab.lab import Lab
    from lab.layout import LabLayout
    from lab.orgs import lab_profile
    from lab.services.charon import GatewayService, MfpCharonService

    lab = Lab(layout=LabLayout.from_env(), services=[])
    was_up = lab.status()["lab"]["up"]
    lab.up()
    mfp, gw = MfpCharonService(), None
    try:
        mfp.start(lab)
        gw = GatewayService(args.org, backend=mfp.backend())
        gw.start(lab)
        tun = open_tunnel(TunnelConfig(backend=mfp.backend(), vici_socket=str(mfp.vici_socket(lab)),
                                       netns=lab.host("office").ns))
        wire = lab_profile(lab, args.org)
        up_t, purge_t, kill_t, dpurge_t = [], [], [], []
        for _ in range(args.runs):
            prof = SessionProfile.from_wire(wire)
            t0 = time.perf_counter()
            tun.up(prof, timeout=10)
            up_t.append(time.perf_counter() - t0)
            tun.down()
            t0 = time.perf_counter()
            tun.purge()
            purge_t.append(time.perf_counter() - t0)
            prof.wipe()
        for _ in range(args.kill_runs):
            prof = SessionProfile.from_wire(wire)
            tun.up(prof, timeout=10)
            events: queue.Queue = queue.Queue()
            stop = threading.Event()
            th = threading.Thread(target=lambda: [events.put((time.perf_counter(), e)) for e in tun.events(stop)],
                                  daemon=True)
            th.start()
            time.sleep(0.5)
            t_kill = time.perf_counter()
            gw.kill(lab)
            t_down, ev = events.get(timeout=30)
            stop.set()
            assert isinstance(ev, TunnelDown)
            kill_t.append(t_down - t_kill)
            tun.purge()
            dpurge_t.append(time.perf_counter() - t_down)
            th.join(timeout=2)
            prof.wipe()
            gw.start(lab)
        result = {
            "what": "tenantprint tunnel latencies (lab, real charons)",
            "backend": mfp.backend(), "org": args.org, "machine": platform.node(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "up": _stats(up_t), "purge_after_down": _stats(purge_t),
            "kill_to_tunnel_down": _stats(kill_t), "tunnel_down_to_purge_verified": _stats(dpurge_t),
            "notes": "kill runs are fewer: each waits for dead-peer detection (dpd_delay 1 s + 3 retransmits)",
        }
    finally:
        if gw is not None:
            gw.stop(lab)
        mfp.stop(lab)
        if not was_up:
            lab.down()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
