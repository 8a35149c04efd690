"""`python -m bench.panel [--runs 20]`: a tap's first screen change, card event -> the panel shows
"Looking up …" (issue 15: aim <= 50 ms at the lab's RTT 0).

On the whole lab: a card of `initech` (no contract: the lookup is refused at once, the session
purged, the firmware idle again, so every run starts from the idle screen) is presented at a random
phase; the times:

- `card_to_socket`:  the firmware's card event (its `tap` audit entry, wall clock) -> the screen
  document with the `looking-up` line, as a client long-polling the panel socket receives it;
- `card_to_panel`:   the card event -> the same screen as the web panel's Server-Sent Events stream
  delivers it to a browser's connection (`GET /events` on the MFP host's loopback): what the
  kiosk browser gets, before its own rendering (one frame, ~16 ms at 60 Hz, not measured here).

Both clients run inside the MFP host (its network namespace), timestamps are `time.time()` (one
kernel: comparable with the firmware's). Lab prefix `TP_LAB_PREFIX` (default `tpbp`); the lab is
brought up and down here. Writes bench/results/panel.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from bench.stats import summary, table, write

REPO = Path(__file__).resolve().parents[1]

# Inside the office host: print (receipt time, screen, line key) of every screen the source sends.
_SOCKET_WATCH = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from firmware import status
version = -1
while True:
    doc = status.request(sys.argv[2], {"cmd": "wait", "after": version, "timeout": 20}, timeout=30)
    t = time.time()
    if "version" in doc and doc["version"] != version:
        version = doc["version"]
        print(json.dumps({"t": t, "screen": doc.get("screen"), "key": (doc.get("line") or {}).get("key")}), flush=True)
"""

_SSE_WATCH = r"""
import http.client, json, sys, time
host, port = sys.argv[1].rsplit(":", 1)
conn = http.client.HTTPConnection(host, int(port), timeout=60)
conn.request("GET", "/events", headers={"Accept": "text/event-stream"})
answer = conn.getresponse()
data = []
while True:
    line = answer.fp.readline()
    if not line:
        break
    line = line.rstrip(b"\r\n")
    if line.startswith(b"data:"):
        data.append(line[5:].strip())
    elif not line and data:
        t = time.time()
        view = json.loads(b"".join(data))
        data = []
        key = (view.get("line") or {}).get("key") if isinstance(view.get("line"), dict) else view.get("line_key")
        print(json.dumps({"t": t, "screen": view.get("screen"), "key": key, "view": view}), flush=True)
"""


def _watchers(lab):
    from lab.services.firmware import HOST, PANEL_LISTEN, PANEL_SOCKET

    host = lab.host(HOST)
    sock = subprocess.Popen(host.argv([sys.executable, "-c", _SOCKET_WATCH, str(REPO), PANEL_SOCKET]),
                            stdout=subprocess.PIPE, text=True)
    sse = subprocess.Popen(host.argv([sys.executable, "-c", _SSE_WATCH, PANEL_LISTEN]),
                           stdout=subprocess.PIPE, text=True)
    return sock, sse


def _first_after(proc, t0: float, want, timeout: float = 10.0) -> float:
    """The receipt time of the first line from `proc` after `t0` for which `want(record)` holds."""
    import select

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if not ready:
            continue
        rec = json.loads(proc.stdout.readline())
        if rec["t"] >= t0 and want(rec):
            return rec["t"]
    raise TimeoutError("the screen did not change")


def _looking_up(rec: dict) -> bool:
    view = rec.get("view") or {}
    return rec.get("key") == "looking-up" or "initech" in json.dumps(view.get("line", ""))


def run(runs: int) -> dict:
    os.environ.setdefault("TP_LAB_PREFIX", "tpbp")
    from lab import actions
    from lab.lab import Lab
    from lab.services.firmware import firmware_status

    lab = Lab()
    lab.down()
    lab = Lab()
    lab.up()
    sock, sse = _watchers(lab)
    to_socket, to_panel = [], []
    try:
        time.sleep(1.0)
        for _ in range(runs):
            time.sleep(random.uniform(0, 0.4))  # a random phase against pcscd's poll
            start = time.time()
            actions.tap(lab, "initech", "ivy")
            audit = [a for a in firmware_status(lab)["audit"] if a.get("event") == "tap" and a.get("t", 0) >= start - 1]
            t_card = audit[-1]["t"]
            to_socket.append(_first_after(sock, t_card, lambda r: r.get("key") == "looking-up") - t_card)
            to_panel.append(_first_after(sse, t_card, _looking_up) - t_card)
    finally:
        for proc in (sock, sse):  # ours, by pid
            proc.kill()
            proc.wait()
        lab.down()
    return {"paths": {"card_to_socket": summary(to_socket), "card_to_panel": summary(to_panel)},
            "aim_ms": 50, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.panel")
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args(argv)
    results = run(args.runs)
    print(table(results["paths"]))
    print(f"-> {write('panel', results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
