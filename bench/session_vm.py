"""`python -m bench.session_vm [--runs 5] [--primitive-runs 5]`: bench.session's paths on the lab
with the MFP as a QEMU/TCG guest booted from the amd64 twin image (`lab up --mfp vm`: the firmware
the image's systemd unit, kernel XFRM), beside the same primitives measured inside that guest.

TCG emulates every guest instruction: absolute times say more about the emulator than about the
firmware. The figure to read is the ratio, as in bench.session: each path / the sum of the
primitives it contains, both measured on the same guest in the same run (tap -> desk queue: lookup +
swanctl initiate; owner's tap -> document: RADIUS + release). The raw numbers are kept beside it.

The paths are bench.session's own code (`_paths`), one session a run: card presented -> desk queue,
owner's tap -> document at the engine, gateway's delete -> purge verified / desk queue gone.

The primitives run in the guest as root over the lab's ssh connection, with the image's Python
(/opt/tenantprint/venv: hal, firmware, org; no lab/), the firmware idle beside them:
- `lookup`: bench.session's lookup script with the guest's firmware.toml (its enrolment, the
  device's key from its state dir): a fresh signed HTTPS request each, as a session makes.
- `swanctl_initiate`: bench.session's initiate script against a bare charon the benchmark starts in
  the guest's root namespace (kernel backend; the credentials and conn loaded by the firmware's own
  `ViciTunnel.load` from the profile the cloud serves, with the device certificate and key from the
  state dir; the device firewall admits the gateway while it runs, as the firmware does before
  IKE). Stopped and purged after.
- `radius`: bench.session's RADIUS script through that tunnel (RadSec with the device certificate
  in certificate mode), with fresh card proofs.
- `cups_release`: a standalone session cupsd in the guest (hal.printer.cupsd, on 127.0.0.1:6312,
  started with the engine's model built just before, as the device hands its sessions' cupsd) and
  the firmware's PrintEngine sending to the engine the guest's firmware.toml names (the lab's, on
  the office host): release -> the document at the engine. `cups_release_guest_only`: the same
  release to the engine's report that the job ended, timed in the guest alone (a cross-check that
  needs no clock offset; it ends later, at the engine's job state, polled every 10 ms).

Clocks: the guest's wall clock is not the host's (TCG, its own RTC and timekeeping). Times a path
takes from both sides (the firmware's audit entries are the guest's; the card, the desk queue, the
gateway's listing and the engine's record are the host's) are taken to the host's clock with an
offset measured before each run: a small echo loop in the guest (one ssh channel kept open) answers
each line with its `time.time()`; of 15 round trips the shortest gives offset = guest - the host's
midpoint, good to half that round trip (reported: `clock`). A path timed on one side only (the card
presented -> the desk queue, all host) needs no offset. The primitives are timed inside the guest
(perf_counter) but for `cups_release`, whose end is the engine's record on the host.

Under TCG the first session after the guest's boot and each primitive's first sample (a fresh
process, a fresh charon's first IKE with the gateway) take several times the rest: `samples_ms`
keeps every sample in order; use 3 runs at least so that the medians are not the cold ones. The
firmware's audit entries lag the events they stand for (they are written when its main loop runs
the machine's effects, which TCG slows): parts that end at another side's event (`gateway_notice`,
`desk_queue`) can come out negative; the totals do not depend on that split.

Measured (2026-12-03, 2-core x86-64 host shared with other work, `--runs 10 --primitive-runs 10`,
medians): card event -> desk queue 455 ms (lookup 72, IKE 548, print service 26); lookup 36 +
swanctl initiate 358 in the guest: ratio 1.16. Card event -> document 135 ms (auth 59, release
79); RADIUS 4 (one RadSec connection kept, as bench.session's script and the firmware do) +
release 51: ratio 2.43. Tap -> desk queue 1075 ms, owner's tap -> document 783 ms (the card part,
the lab's reader through the guest's pcscd, ~600 ms of each). Guest clock offset 4 ms (drifting
11 ms over the run), known to 0.7 ms. The whole run with the lab: 273 s.

Lab prefix `TP_LAB_PREFIX` (default `tpbv`); the lab is brought up and down here. Results in
bench/results/session-vm.json (`-psk` with `--trust psk`).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import time

from bench.session import (_INITIATE, _LOOKUP, _RADIUS, DOC, ORG, OWNER, _paths, _report, on_lab,
                           rate_limited)
from bench.stats import summary, table, write

GUEST_PYTHON = "/opt/tenantprint/venv/bin/python"
GUEST_CONFIG = "/etc/tenantprint/firmware.toml"
GUEST_STATE = "/var/lib/tenantprint"  # firmware.config DeviceSection.state_dir's default
NO_REPO = "/nonexistent"  # the scripts' first argument puts the repository on sys.path: the guest has none
RELEASE_LISTEN = "127.0.0.1:6312"  # not the firmware's model builder's 6311
PATIENCE = 6.0  # TCG: the firmware's steps take several times as long as on the host
STATUS_POLL_S = 0.05

# In the guest: one line in, the guest's wall clock out (GuestClock).
_ECHO = "import sys, time\nfor _ in sys.stdin:\n    print(repr(time.time()), flush=True)\n"

# In the guest (root namespace): a bare charon, the profile's conn loaded, bench.session's initiate
# and RADIUS scripts run against it; everything it made is stopped and purged after. The request
# (profile, proofs, the scripts) arrives on stdin.
_TUNNEL = r"""
import json, os, socket, subprocess, sys, time
from pathlib import Path
from hal.directory.profile import SessionProfile
from hal.net.firewall import Firewall
from hal.tunnel import TunnelConfig, open_tunnel
from hal.tunnel.charon_conf import strongswan_conf
from hal.tunnel.vici_tunnel import conn_name

req = json.load(sys.stdin)
CHARON, VICI, PID = "/usr/lib/ipsec/charon", "/run/charon.vici", "/run/charon.pid"
for p in (VICI, PID):
    if os.path.exists(p):
        raise SystemExit(f"{p} exists: another charon in the guest's root namespace?")
work = Path("/run/tp-bench-charon")
work.mkdir(mode=0o700, exist_ok=True)
conf = work / "strongswan.conf"
conf.write_text(strongswan_conf("kernel", vici_socket=VICI))
profile = SessionProfile.from_wire(req["profile"])
name = conn_name(req["org"])
state = Path(req["state_dir"])
cert, key = state / "device-cert.pem", state / "ike.key"
firewall = Firewall("kernel")
with open(work / "charon.log", "ab") as log:
    charon = subprocess.Popen([CHARON], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "STRONGSWAN_CONF": str(conf)},
                              cwd="/", start_new_session=True)
tun, out = None, {}

def child(script, *args, stdin=None):
    proc = subprocess.run([sys.executable, "-c", script, *args], input=stdin, capture_output=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"primitive failed: {proc.stderr.decode(errors='replace')[-800:]}")
    return json.loads(proc.stdout)

try:
    deadline = time.monotonic() + 60
    while True:
        if charon.poll() is not None:
            raise SystemExit(f"charon exited at start: {(work / 'charon.log').read_text()[-500:]}")
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(VICI)
                break
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise SystemExit("charon's VICI socket did not answer within 60 s")
        time.sleep(0.02)
    tun = open_tunnel(TunnelConfig(backend="kernel", vici_socket=VICI, device_cert=str(cert), device_key=str(key)))
    firewall.allow_gateway(profile.vpn.gateway)
    tun.load(profile)  # the session's credentials and conn, as the firmware loads them
    out["swanctl_initiate"] = child(req["initiate"], name, str(req["n"]))
    options = {"client_cert": str(cert), "client_key": str(key)} if profile.auth.kind == "radsec" else {}
    out["radius"] = child(req["radius"], req["no_repo"], stdin=json.dumps(
        {"profile": req["profile"], "user": req["user"], "options": options, "proofs": req["proofs"]}).encode())
finally:
    profile.wipe()
    if tun is not None:
        tun.follow(req["org"])
        tun.down()
        tun.purge()
    firewall.forget_gateways()
    charon.terminate()
    try:
        charon.wait(10)
    except subprocess.TimeoutExpired:
        charon.kill()
        charon.wait(5)
    for p in (VICI, PID):
        Path(p).unlink(missing_ok=True)
print(json.dumps(out))
"""

# In the guest: a standalone session cupsd and the firmware's PrintEngine for the lab's engine; n
# times a Print-Job into the cupsd (held), then the release timed: its wall-clock start (for the
# engine's record on the host) and, in the guest alone, until the engine reports the job ended.
_RELEASE = r"""
import base64, json, shutil, sys, threading, time
from pathlib import Path
from hal.printer import INBOUND_QUEUE
from hal.printer.cupsd import SessionPrintService
from hal.printer.engine import PrintEngine
from hal.printer.ipp import call, encode_print_job
from firmware.config import load

req = json.load(sys.stdin)
engine_uri = load(Path(req["config"]), required=True).printer.engine_uri  # the device's: on the office LAN
doc = base64.b64decode(req["doc"])
root = Path("/run/tp-bench-release")
shutil.rmtree(root, ignore_errors=True)
# The engine's model built first, as the device does off the tap's path and hands each session's
# cupsd (hal/printer/cupsd.py `engine_model`): the release timed is the session's, not the build.
(root / "model").mkdir(parents=True)
builder = SessionPrintService(root / "model", [req["listen"]], engine_uri)
try:
    builder.start()
    model = builder.engine_model()
except Exception as exc:
    try:
        log = (root / "model" / "log" / "error_log").read_text(errors="replace")[-600:]
    except OSError:
        log = ""
    raise SystemExit(f"no engine model: {type(exc).__name__}: {exc}; error_log: {log}")
finally:
    builder.stop()
    shutil.rmtree(root / "model", ignore_errors=True)
if model is None:
    raise SystemExit("no engine model")
(root / "cupsd").mkdir(parents=True)
ps = SessionPrintService(root / "cupsd", [req["listen"]], engine_uri, engine_model=model)
engine = PrintEngine(engine_uri, root / "spool", poll_s=0.01, retry_s=1.0)
stop, ended, out = threading.Event(), [], []
queue = f"ipp://{req['listen']}/printers/{INBOUND_QUEUE}"

def until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not (v := cond()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {what}")
        time.sleep(0.005)
    return v

ps.start()
server = threading.Thread(target=engine.serve, args=(stop, ended.append), daemon=True)
server.start()
try:
    for i in range(req["n"]):
        held = len(ps.held_jobs())
        call(queue, encode_print_job(queue, req["user"], "bench", "application/pdf") + doc, read_timeout=60)
        jobs = until(lambda: len(ps.held_jobs()) > held and ps.held_jobs(), 60, "the held job")
        k = len(ended)
        t_wall, t0 = time.time(), time.perf_counter()
        engine.take_held(ps, jobs[-1].id, session=i, org="bench", user=req["user"], title=jobs[-1].title,
                         document_format=jobs[-1].document_format)
        until(lambda: len(ended) > k, 120, "the engine's end of the job")
        if not ended[k].printed:
            raise SystemExit(f"not printed: {ended[k]}")
        out.append({"t_wall": t_wall, "ended_s": time.perf_counter() - t0})
finally:
    stop.set()
    ps.stop()
    server.join(10)
    shutil.rmtree(root, ignore_errors=True)
print(json.dumps(out))
"""


# -- the guest's clock --------------------------------------------------------------------------


def best_offset(samples: list[tuple[float, float, float]]) -> tuple[float, float]:
    """(offset, uncertainty) of the guest's clock from the host's, from round trips (host before,
    guest's answer, host after): the shortest trip's guest time minus its midpoint, good to half
    that trip (the answer was read somewhere within it)."""
    if not samples:
        raise ValueError("no clock samples")
    before, guest, after = min(samples, key=lambda s: s[2] - s[0])
    if after < before:
        raise ValueError("a round trip that ends before it starts")
    return guest - (before + after) / 2, (after - before) / 2


def clock_summary(history: list[dict]) -> dict:
    """The offsets measured in a run: median, drift (last - first), spread, worst uncertainty (ms)."""
    if not history:
        return {"n": 0}
    offsets = [h["offset_s"] for h in history]
    return {"n": len(history), "offset_median_ms": round(statistics.median(offsets) * 1000, 3),
            "drift_ms": round((offsets[-1] - offsets[0]) * 1000, 3),
            "spread_ms": round((max(offsets) - min(offsets)) * 1000, 3),
            "uncertainty_max_ms": round(max(h["half_rtt_s"] for h in history) * 1000, 3)}


def release_times(starts: list[dict], docs: list[dict], offset: float) -> list[float]:
    """The releases' times to the document at the engine: the k-th start (the guest's wall clock,
    taken to the host's with `offset` = guest - host) to the k-th new record's `at` (the host's)."""
    if len(docs) < len(starts):
        raise ValueError(f"{len(starts)} releases but {len(docs)} documents at the engine")
    return [d["at"] - (s["t_wall"] - offset) for s, d in zip(starts, docs)]


class GuestClock:
    """The guest's wall clock against the host's, over one ssh channel kept open (`argv` runs the
    echo loop in the guest). `sync()` measures the offset; `to_host(t)` takes a guest time to the host."""

    def __init__(self, argv: list[str], samples: int = 15):
        self.samples = samples
        self.history: list[dict] = []
        self.offset: float | None = None
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def _round_trip(self) -> tuple[float, float, float]:
        t0 = time.time()
        self._proc.stdin.write("\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        t1 = time.time()
        if not line:
            raise RuntimeError(f"the guest's clock echo ended (exit {self._proc.poll()})")
        return t0, float(line), t1

    def sync(self) -> float:
        self._round_trip()  # the first answer also pays for the interpreter's start
        offset, err = best_offset([self._round_trip() for _ in range(self.samples)])
        self.offset = offset
        self.history.append({"at": time.time(), "offset_s": offset, "half_rtt_s": err})
        return offset

    def to_host(self, t_guest: float) -> float:
        if self.offset is None:
            self.sync()
        return t_guest - self.offset

    def close(self) -> None:
        """End the echo loop (ours, by its pipe; killed if it does not go)."""
        try:
            self._proc.stdin.close()
            self._proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()


# -- the run --------------------------------------------------------------------------------------


def _guest_argv(lab, argv: list[str]) -> list[str]:
    """The ssh command line that runs `argv` in the guest over the lab's connection."""
    return lab.service("firmware").guest_argv(lab, argv)


def _in_guest(lab, script: str, *args: str, stdin: bytes | None = None, timeout: float = 900):
    proc = lab.service("firmware").guest(lab, [GUEST_PYTHON, "-c", script, *args], input=stdin, timeout=timeout,
                                         check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"primitive in the guest failed (exit {proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace')[-800:]}")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def _guest_primitives(lab, n: int, clock: GuestClock) -> dict[str, list[float]]:
    from lab import sun_cards
    from lab.orgs import lab_profile
    from lab.services.engine import printed_documents
    from lab.services.firmware import firmware_status

    if firmware_status(lab)["state"] != "idle":
        raise RuntimeError("the primitives need the firmware idle")
    out: dict[str, list[float]] = {}
    out["lookup"] = rate_limited(n, lambda k: _in_guest(lab, _LOOKUP, NO_REPO, GUEST_CONFIG, ORG, str(k)))

    wire = lab_profile(lab, ORG, trust=lab.options.trust)
    req = {"profile": wire, "org": ORG, "user": OWNER, "n": n, "state_dir": GUEST_STATE, "no_repo": NO_REPO,
           "proofs": sun_cards.next_proofs(lab, ORG, OWNER, n), "initiate": _INITIATE, "radius": _RADIUS}
    out.update(_in_guest(lab, _TUNNEL, stdin=json.dumps(req).encode()))

    with open(DOC, "rb") as f:
        doc = base64.b64encode(f.read()).decode()
    k = len(printed_documents(lab))
    starts = _in_guest(lab, _RELEASE, stdin=json.dumps(
        {"n": n, "user": OWNER, "listen": RELEASE_LISTEN, "config": GUEST_CONFIG, "doc": doc}).encode())
    offset = clock.sync()
    out["cups_release"] = release_times(starts, printed_documents(lab)[k:], offset)
    out["cups_release_guest_only"] = [s["ended_s"] for s in starts]
    return out


def _diagnose(lab, kept) -> None:
    """The guest's side of a failure: its firmware's status and journal, beside the lab's logs."""
    from lab.services.firmware import firmware_status

    try:
        (kept / "firmware-status.json").write_text(json.dumps(firmware_status(lab, timeout=10), indent=1))
    except Exception as exc:
        (kept / "firmware-status.json").write_text(json.dumps({"error": repr(exc)}))
    journal = lab.service("firmware").guest(lab, ["journalctl", "-b", "--no-pager", "-o", "short-precise", "-n", "3000"],
                                            check=False, timeout=120)
    (kept / "guest-journal.log").write_bytes(journal.stdout)


def run(runs: int, primitive_runs: int, trust: str = "cert") -> dict:
    os.environ.setdefault("TP_LAB_PREFIX", "tpbv")
    from lab.options import LabOptions

    def body(lab) -> dict:
        from lab.poll import wait_for
        from lab.services.firmware import firmware_status

        # A guest just booted is still getting its device certificate and building its spare
        # sandbox: the first tap waits for those, as a person does not tap a device still starting
        t0 = time.monotonic()
        wait_for(lambda: (s := firmware_status(lab, timeout=10)).get("spare") and s["state"] == "idle", 600,
                 "the guest's firmware at rest with its spare sandbox", 1.0)
        settle_s = time.monotonic() - t0
        clock = GuestClock(_guest_argv(lab, [GUEST_PYTHON, "-u", "-c", _ECHO]))
        try:
            t0 = time.monotonic()
            paths = _paths(lab, runs, guest_clock=clock, patience=PATIENCE, status_poll_s=STATUS_POLL_S)
            t1 = time.monotonic()
            try:
                prims = _guest_primitives(lab, primitive_runs, clock)
            except Exception:
                print(table({k: summary(v) for k, v in paths.items()}), file=sys.stderr, flush=True)
                raise
            t2 = time.monotonic()
        finally:
            clock.close()
        res = _report(0.0, paths, prims)
        # every sample, in order (ms): a fresh process's or charon's first is several times the rest under TCG
        res["samples_ms"] = {k: [round(x * 1000, 2) for x in v] for k, v in {**paths, **prims}.items()}
        res["clock"] = clock_summary(clock.history)
        res["seconds"] = {"settle": round(settle_s, 1), "paths": round(t1 - t0, 1), "primitives": round(t2 - t1, 1)}
        res["mfp"] = {k: v for k, v in lab.mfp_view().items() if k in ("kind", "accel", "memory_mb", "image", "boot")}
        return res

    t0 = time.monotonic()
    res = on_lab(LabOptions(mfp="vm", trust=trust), "session-vm-failed-logs", body, _diagnose)
    res["seconds"]["total_with_lab"] = round(time.monotonic() - t0, 1)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.session_vm")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--primitive-runs", type=int, default=5)
    p.add_argument("--trust", choices=("cert", "psk"), default="cert", help="the lab's trust mode (lab up --trust)")
    args = p.parse_args(argv)
    results = run(args.runs, args.primitive_runs, args.trust)
    results["trust"] = args.trust
    print(table(results["paths"]))
    print(table(results["primitives"]))
    for k, v in results["ratios"].items():
        print(f"ratio {k}: {v}")
    print(f"clock: {results['clock']}; seconds: {results['seconds']}")
    print(f"-> {write('session-vm' + ('-psk' if args.trust == 'psk' else ''), results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
