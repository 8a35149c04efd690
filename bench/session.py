"""`python -m bench.session [--runs 20] [--wan-rtt-ms N] [--primitive-runs 20]`: what a person at the
MFP waits for, on the whole system in the lab, split into its parts, beside the primitives measured
alone in the same run.

Paths (one session each run; the card is presented at a random phase, as a person's tap would be):
- tap -> desk queue:  card presented -> the org's desk PC has a trusted MFP queue. Parts: `card`
  (presented -> the firmware's card event; the lab's vpcd is polled by pcscd every 400 ms), `lookup`
  (card event -> profile from the cloud), `ike` (profile -> tunnel up), `print_service` (tunnel up ->
  session cupsd up), `gateway_notice` (tunnel up -> the gateway agent lists the MFP; runs beside
  `print_service`), `desk_queue` (the later of the two -> the queue is on the desk).
- owner's tap -> document: card presented -> the held job's document at the engine. Parts: `card`,
  `auth` (card event -> the org's RADIUS said yes, through the tunnel), `release` (yes -> document at
  the engine: the document into the engine spool, one Print-Job, ippeveprinter).
- tunnel drop -> purge verified / -> desk queue removed: the gateway terminates the IKE SA (a clean
  delete, not dead-peer detection) -> the firmware is idle with its purge verified / the desk's queue
  is gone.

Primitives (the same lab, the firmware idle, each alone): a bare HTTPS lookup (a fresh signed
request with the device's key, as the session makes), `swanctl --initiate` of the same profile,
a bare RADIUS request through that tunnel, a bare release (a standalone session cupsd and the
firmware's PrintEngine: release -> document at the engine), all timed inside the office host. Ratio = whole path measured
from the card event / sum of the primitives it contains (tap -> queue: lookup + initiate; owner's
tap -> document: RADIUS + release). The card part is the lab's simulated reader, reported apart.

`--busy-core`: one core kept busy for the whole run by a process of the benchmark's own (a stand-in
for the kiosk browser a Pi runs beside the firmware); results in `session-busy*.json`.

Timestamps are wall-clock (`time.time()`), comparable across the lab's hosts (one kernel): the
firmware's audit entries carry them, the gateway agent's listing has `since`, the engine's recorder
writes `at`. Lab prefix `TP_LAB_PREFIX` (default `tpbs`); the lab is brought up and down here.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import cups

from bench.stats import summary, table, write
from lab.poll import wait_for

DOC = "/usr/share/cups/data/default-testpage.pdf"
ORG, OWNER = "acme", "alice"
POLL_S = 0.002
LOOKUP_BURST, LOOKUPS_PER_MIN = 20, 30  # the cloud's default device limits (cloud/config.py)

# Runs on the office host: N lookups, each with a fresh client (new TLS connection), as a session does.
_LOOKUP = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from firmware.config import load
from firmware.devices import build_directory
from pathlib import Path
cfg = load(Path(sys.argv[2]), required=True)
out = []
for _ in range(int(sys.argv[4])):
    t0 = time.perf_counter()
    d = build_directory(cfg)
    p = d.fetch_profile(sys.argv[3])
    out.append(time.perf_counter() - t0)
    p.wipe()
    d.close()
print(json.dumps(out))
"""

# Runs on the office host: N `swanctl --initiate` of the loaded connection, each torn down after.
_INITIATE = r"""
import json, subprocess, sys, time
name, n = sys.argv[1], int(sys.argv[2])
out = []
for i in range(n):
    t0 = time.perf_counter()
    subprocess.run(["swanctl", "--initiate", "--child", name, "--ike", name, "--timeout", "10"],
                   check=True, capture_output=True)
    out.append(time.perf_counter() - t0)
    if i < n - 1:
        subprocess.run(["swanctl", "--terminate", "--ike", name, "--force", "--timeout", "5"],
                       check=True, capture_output=True)
print(json.dumps(out))
"""

# Runs on the office host (through the tunnel the initiate phase left up): N RADIUS requests for a
# card-only user, each with a fresh proof of their card; the profile (with the secret in PSK mode;
# with the device's certificate files for RadSec in certificate mode) arrives on stdin.
_RADIUS = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from hal.auth import open_authenticator
from hal.directory.profile import SessionProfile
req = json.load(sys.stdin)
auth = open_authenticator(SessionProfile.from_wire(req["profile"]).auth, **req["options"])
out = []
for proof in req["proofs"]:
    t0 = time.perf_counter()
    o = auth.authenticate(req["user"], req["profile"]["org_id"], proof=proof)
    out.append(time.perf_counter() - t0)
    if not o.accepted:
        raise SystemExit(f"not accepted: {type(o).__name__}")
print(json.dumps(out))
"""


def _audit(status: dict, event: str, session: int, last: bool = True, to_host=float) -> float:
    hits = [to_host(a["t"]) for a in status["audit"] if a.get("event") == event and a.get("session") == session]
    if not hits:
        raise RuntimeError(f"no {event!r} audit entry for session {session}: {status['audit'][-6:]}")
    return hits[-1] if last else hits[0]


def run(runs: int, wan_rtt_ms: float, primitive_runs: int, trust: str = "cert") -> dict:
    os.environ.setdefault("TP_LAB_PREFIX", "tpbs")
    from lab.options import LabOptions

    def body(lab) -> dict:
        return _report(wan_rtt_ms, _paths(lab, runs), _primitives(lab, primitive_runs))

    return on_lab(LabOptions(wan_rtt_ms=wan_rtt_ms, trust=trust), f"session-rtt{wan_rtt_ms:g}-failed-logs", body)


def on_lab(options, failed_logs: str, body, diagnose=None):
    """`body(lab)` on a lab of its own (any earlier lab of the prefix taken down first), the lab
    down after; when `body` fails, the lab's logs are kept in bench/results/<failed_logs>, with
    what `diagnose(lab, dir)` adds there before the lab goes."""
    from lab.lab import Lab

    Lab(options=options).down()
    lab = Lab(options=options)
    lab.up()
    try:
        return body(lab)
    except Exception:
        # the lab goes down with its logs: keep them, they say what went wrong
        kept = Path(__file__).parent / "results" / failed_logs
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(lab.layout.logs_dir, kept)
        if diagnose is not None:
            try:
                diagnose(lab, kept)
            except Exception as exc:  # the benchmark's own failure is the one to report
                print(f"diagnosing the failure failed: {exc!r}", file=sys.stderr)
        print(f"the lab's logs: {kept}", file=sys.stderr)
        raise
    finally:
        lab.down()


def _paths(lab, runs: int, guest_clock=None, patience: float = 1.0,
           status_poll_s: float | None = None) -> dict[str, list[float]]:
    """The three paths, `runs` times. `guest_clock` (the MFP a guest with its own clock,
    bench.session_vm.GuestClock): the firmware's audit times are taken to the host's clock with the
    offset it measures before each run. `patience` scales the waits (TCG is several times slower);
    `status_poll_s` spaces the firmware status polls (each costs a guest's one vCPU a request)."""
    from lab import actions
    from lab.services import org_agents
    from lab.services.engine import printed_documents
    from lab.services.firmware import firmware_status
    from lab.vcard import VirtualCard
    from lab.orgs import DEVICE_ID
    from org.desk_agent import trusted_model
    from org.gateway_config import conn_name
    from vici import Session as ViciSession

    card = VirtualCard(lab)
    out: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        out.setdefault(name, []).append(seconds)

    def desk_queue() -> bool:
        for _ in range(50):
            try:
                queues = org_agents.desk_queues(lab, ORG)
                break
            except (cups.IPPError, RuntimeError) as exc:
                # the desk cupsd, polled every 2 ms mid-change, now and then refuses or fails a request
                last = exc
                time.sleep(0.002)
        else:
            raise RuntimeError(f"the desk's CUPS keeps failing CUPS-Get-Printers: {last!r}")
        return any(q["accepting"] and trusted_model(q["model"]) for q in queues.values())

    def status() -> dict:
        return firmware_status(lab)

    def present(user: str, until) -> tuple[float, float]:
        """Present the card at a random phase of the reader's poll and keep it there until `until()`
        holds; returns when it was presented and when `until()` first held."""
        time.sleep(0.45)  # pcscd notices the last removal only at its next poll of vpcd
        time.sleep(random.uniform(0, 0.4))
        t0 = time.time()
        card.insert(actions.default_uid(ORG, user), user=user, org=ORG)
        try:
            wait_for(until, 30 * patience, "the tap to take effect", POLL_S)
            t1 = time.time()
        finally:
            card.remove()
        wait_for(lambda: not card.status().get("connected"), 5 * patience, "the card removed", 0.005)
        return t0, t1

    gw_vici = lab.host(f"gw-{ORG}").path("/run/charon.vici")
    gateway_conn = conn_name(DEVICE_ID)
    for _ in range(runs):
        to_host = float
        if guest_clock is not None:
            guest_clock.sync()
            to_host = guest_clock.to_host

        def audit(st: dict, event: str, session: int) -> float:
            return _audit(st, event, session, to_host=to_host)

        # -- tap -> desk queue
        t_in, t_queue = present(OWNER, desk_queue)
        st = wait_for(lambda: (s := status())["state"] == "ready" and s, 10 * patience, "ready", status_poll_s or 0.005)
        session = max(a.get("session", 0) for a in st["audit"] if a.get("event") == "tap")
        t_tap, t_prof = audit(st, "tap", session), audit(st, "profile", session)
        t_up, t_ready = audit(st, "tunnel-up", session), audit(st, "ready", session)
        t_seen = min(m["since"] for m in org_agents.gateway_mfps(lab, ORG)["mfps"])
        add("queue.card", t_tap - t_in)
        add("queue.lookup", t_prof - t_tap)
        add("queue.ike", t_up - t_prof)
        add("queue.print_service", t_ready - t_up)
        add("queue.gateway_notice", t_seen - t_up)
        add("queue.desk_queue", t_queue - max(t_ready, t_seen))
        add("tap_to_desk_queue", t_queue - t_in)
        add("card_event_to_desk_queue", t_queue - t_tap)
        add("tap_to_ready", t_ready - t_in)

        # -- owner's tap -> document
        org_agents.print_file(lab, ORG, OWNER, DOC)
        wait_for(lambda: status()["held_jobs"], 30 * patience, "the held job", status_poll_s or 0.005)
        # The owner walks from their desk to the printer: seconds, by which time the next session's
        # spare sandbox (built SPARE_DELAY_S after this session's lookup) is ready. Tapping before
        # it is (here ~0.5 s after the first tap) would time the spare's build, not the release.
        wait_for(lambda: status().get("spare"), 15 * patience, "the spare sandbox", status_poll_s or POLL_S)
        n = len(printed_documents(lab))
        t_in, _ = present(OWNER, lambda: len(printed_documents(lab)) > n)
        t_doc = printed_documents(lab)[n]["at"]
        st = status()
        t_tap, t_yes = audit(st, "tap", session), audit(st, "auth-accepted", session)
        add("doc.card", t_tap - t_in)
        add("doc.auth", t_yes - t_tap)
        add("doc.release", t_doc - t_yes)
        add("owner_tap_to_document", t_doc - t_in)
        add("card_event_to_document", t_doc - t_tap)
        wait_for(lambda: status()["state"] == "ready", 10 * patience, "ready again", status_poll_s or 0.005)

        # -- tunnel drop (the gateway deletes the SA) -> purge verified / desk queue removed
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(gw_vici))
        t_drop = time.time()
        for _ in ViciSession(sock).terminate({"ike": gateway_conn, "timeout": "-1"}):
            pass
        sock.close()
        wait_for(lambda: not desk_queue(), 30 * patience, "the desk queue to go", POLL_S)
        add("drop_to_desk_queue_removed", time.time() - t_drop)
        st = wait_for(lambda: (s := status())["state"] == "idle" and s, 30 * patience, "the purge", status_poll_s or POLL_S)
        purged = [a for a in st["audit"] if a.get("event") == "purged" and a.get("session") == session]
        if not purged or not purged[-1].get("ok"):
            raise RuntimeError(f"session {session} was not purged cleanly: {purged}")
        add("drop_to_purge_verified", to_host(purged[-1]["t"]) - t_drop)
        # The next person taps seconds after a session ended, not at once: by then the spare keeper
        # has started and opened its connection to the cloud (interpreter start + 3 round trips), and
        # the spare sandbox with its charon is built (firmware.runtime.SPARE_DELAY_S after the purge).
        wait_for(lambda: status().get("spare"), 15 * patience, "the spare sandbox", status_poll_s or POLL_S)
        time.sleep(1.0)
    return out


def _primitives(lab, n: int) -> dict[str, list[float]]:
    from hal.directory.profile import SessionProfile
    from hal.printer.cupsd import SessionPrintService
    from hal.tunnel import TunnelConfig, open_tunnel
    from hal.tunnel.vici_tunnel import conn_name
    from lab import sun_cards
    from lab.orgs import lab_profile
    from lab.services.charon import MfpCharonService
    from lab.services.engine import engine_uri, printed_documents, serving_engine
    from lab.services.firmware import firmware_status

    office = lab.host("office")
    fw = lab.service("firmware")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out: dict[str, list[float]] = {}
    if firmware_status(lab)["state"] != "idle":
        raise RuntimeError("the primitives need the firmware idle")

    def child(script: str, *args: str, stdin: bytes | None = None) -> list[float]:
        proc = office.run([sys.executable, "-c", script, *args], input=stdin, check=False, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"primitive failed: {proc.stderr.decode(errors='replace')[-800:]}")
        return json.loads(proc.stdout)

    # The cloud's rate limit stays in place (cloud/config.py [limits]: a device's burst of 20 lookups,
    # 30 a minute after it): the sessions just before spent some of the device's tokens, so the
    # lookups wait for the bucket to refill, 20 at a time.
    out["lookup"] = rate_limited(n, lambda k: child(_LOOKUP, repo, str(fw.config_path(lab)), ORG, str(k)))

    # swanctl --initiate of the session's own profile, loaded over VICI into a bare charon on the MFP
    # host (the lab runs none there: each session's charon is in its sandbox; this one is the
    # benchmark's, started here and stopped after)
    wire = lab_profile(lab, ORG, trust=lab.options.trust)
    profile = SessionProfile.from_wire(wire)
    state = fw.data_dir(lab) / "state"  # the device's own certificate and key (certificate mode)
    device_cert, device_key = state / "device-cert.pem", state / "ike.key"
    name = conn_name(ORG)
    mfp = MfpCharonService()
    mfp.start(lab)
    tun = open_tunnel(TunnelConfig(backend=mfp.backend(), vici_socket=str(mfp.vici_socket(lab)), netns=office.ns,
                                   device_cert=str(device_cert), device_key=str(device_key)))
    # the device firewall admits IKE with the session's gateway only: as the firmware does before IKE
    from hal.net.firewall import Firewall
    firewall = Firewall(mfp.backend(), netns=office.ns)
    firewall.allow_gateway(profile.vpn.gateway)
    try:
        tun.load(profile)  # the session's credentials and conn, as the firmware loads them
        out["swanctl_initiate"] = child(_INITIATE, name, str(n))
        options = ({"client_cert": str(device_cert), "client_key": str(device_key)}
                   if profile.auth.kind == "radsec" else {})
        out["radius"] = child(_RADIUS, repo, stdin=json.dumps({"profile": wire, "user": OWNER, "options": options,
                                                               "proofs": sun_cards.next_proofs(lab, ORG, OWNER, n)}).encode())
    finally:
        profile.wipe()
        tun.follow(ORG)
        tun.down()
        tun.purge()
        firewall.forget_gateways()
        mfp.stop(lab)

    # a bare CUPS release on a standalone session cupsd (the firmware is idle: port 631 is free)
    d = lab.layout.data_dir("bench-release")
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    listen = "127.0.0.1:6311"
    ps = SessionPrintService(d, [listen], engine_uri(lab), command_prefix=office.argv([]))
    ps.start()
    engine, stop = serving_engine(lab, lab.layout.data_dir("bench-release-spool"))
    release = []
    try:
        for i in range(n):
            held = len(ps.held_jobs())
            # one Print-Job, as a desk sends it (the session cupsd takes nothing else from the network)
            office.run(["ipptool", "-q", "-f", DOC, "-d", f"user={OWNER}", f"ipp://{listen}/printers/tenantprint",
                        "print-job.test"])
            jobs = wait_for(lambda: len(ps.held_jobs()) > held and ps.held_jobs(), 10, "the held job", 0.002)
            k = len(printed_documents(lab))
            t0 = time.time()
            engine.take_held(ps, jobs[-1].id, session=i, org="bench", user=OWNER, title=jobs[-1].title,
                             document_format=jobs[-1].document_format)
            wait_for(lambda: len(printed_documents(lab)) > k, 10, "the document at the engine", 0.002)
            release.append(printed_documents(lab)[k]["at"] - t0)
    finally:
        stop.set()
        ps.stop()
        shutil.rmtree(d, ignore_errors=True)
    out["cups_release"] = release
    return out


def rate_limited(n: int, lookups) -> list[float]:
    """`n` lookups as `lookups(k)` (k at a time, returning their times), each burst of the device's
    limit after a wait long enough for its bucket to refill."""
    out: list[float] = []
    for start in range(0, n, LOOKUP_BURST):
        time.sleep(LOOKUP_BURST * 60 / LOOKUPS_PER_MIN)
        out.extend(lookups(min(LOOKUP_BURST, n - start)))
    return out


def _median(xs: list[float]) -> float:
    return summary(xs)["median_ms"] / 1000


def _report(wan_rtt_ms: float, paths: dict, prims: dict) -> dict:
    res = {"wan_rtt_ms": wan_rtt_ms, "paths": {k: summary(v) for k, v in paths.items()},
           "primitives": {k: summary(v) for k, v in prims.items()}}
    queue_prims = _median(prims["lookup"]) + _median(prims["swanctl_initiate"])
    doc_prims = _median(prims["radius"]) + _median(prims["cups_release"])
    res["ratios"] = {
        "card_event_to_desk_queue / (lookup + swanctl_initiate)":
            round(_median(paths["card_event_to_desk_queue"]) / queue_prims, 2),
        "card_event_to_document / (radius + cups_release)":
            round(_median(paths["card_event_to_document"]) / doc_prims, 2),
    }
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.session")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--primitive-runs", type=int, default=20)
    p.add_argument("--wan-rtt-ms", type=float, default=0.0)
    p.add_argument("--busy-core", action="store_true", help="keep one core busy for the whole run")
    p.add_argument("--trust", choices=("cert", "psk"), default="cert", help="the lab's trust mode (lab up --trust)")
    args = p.parse_args(argv)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy_core else None
    try:
        results = run(args.runs, args.wan_rtt_ms, args.primitive_runs, args.trust)
    finally:
        if busy is not None:  # ours, by pid
            busy.kill()
            busy.wait()
    results["busy_core"] = args.busy_core
    results["trust"] = args.trust
    print(table(results["paths"]))
    print(table(results["primitives"]))
    for k, v in results["ratios"].items():
        print(f"ratio {k}: {v}")
    suffix = ("-psk" if args.trust == "psk" else "") + ("-busy" if args.busy_core else "") + (f"-rtt{int(args.wan_rtt_ms)}" if args.wan_rtt_ms else "")
    print(f"-> {write('session' + suffix, results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
