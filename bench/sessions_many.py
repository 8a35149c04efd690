"""`python -m bench.sessions_many [--runs 10] [--sessions 100]`: many orgs' sessions at once (issue 14),
on a lab with three contracted orgs (acme, globex and the extra org umbrella: `lab up --extra-orgs 1`).

(a) paths, acme's session measured with two other orgs' sessions open (globex's and umbrella's, each
    with a held job) and with acme's alone, interleaved in the same run (ABBA order: one, three,
    three, one, ...): tap -> desk queue and owner's tap -> document with the parts bench.session
    splits them into (`card` is the lab's reader, 0-400 ms of pcscd's poll: the firmware's share is
    `card_event_to_*`). `ratios_3_over_1`: median with three open / median with one open.
(b) memory with 0, 1, 2, 3 sessions open (each with a held job): RSS and PSS (smaps_rollup) of the
    firmware daemon and of everything it started (bench/proc_memory.py): per session its sandbox's
    processes (charon, session cupsd, keeper, the holder of its mount namespace), the spare sandbox
    and keeper beside them. `per_extra_session`: the growth of daemon + descendants per session
    opened (PSS adds up across processes; RSS counts shared library pages once per process).
(c) footprint over `--sessions` sessions opened and closed one after another (the three orgs in
    turn, a tap every TAP_EVERY_S: the lab's cloud takes 30 lookups a minute from a device): a tap,
    then the org's gateway deletes the IKE SA (a real tunnel drop, as bench.session and
    bench.firmware_footprint do; faster than killing and restarting the gateway, and the idle
    timeout is 300 s) and the firmware purges. Every 10 sessions, at rest (the spare sandbox and
    keeper rebuilt): the daemon's RSS/PSS and its descendants' total. Slope per session by least
    squares over the samples after the first 10 sessions.

A tap whose session does not open (a refused or failed lookup, IKE) is tapped again and listed in
`failed_taps`. The machine's load and other labs' namespaces at the start and end are in the
result: numbers taken beside another lab's test run are noisy. `--keep-logs` keeps the lab's logs
(the firmware's journal has each purge's steps in ms) in bench/results/sessions_many-logs. Lab
prefix `TP_LAB_PREFIX` (default `tpbm`); the lab is brought up and down here. Writes
bench/results/sessions_many.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from bench import proc_memory
from bench.lab_driver import DOC, POLL_S, LabDriver
from bench.stats import summary, table, write
from lab.poll import wait_for

ORG_A, OWNER_A = "acme", "alice"
OTHERS = (("globex", "grace"), ("umbrella", "uma"))
# The lab's cloud lets one device make 30 lookups a minute (cloud/config.py [limits] device_per_min; a
# lookup beyond is refused 429 and the tap fails as "unreachable"): the churn taps no faster.
TAP_EVERY_S = 60 / 28
RATIO_OF = ("card_event_to_desk_queue", "card_event_to_document", "tap_to_desk_queue", "owner_tap_to_document",
            "queue.lookup", "queue.ike", "doc.auth", "doc.release")


def _load() -> dict:
    """The machine's load average and the prefixes of other labs' namespaces (noise if any)."""
    mine = os.environ.get("TP_LAB_PREFIX", "tpbm")
    names = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    return {"loadavg": [round(x, 2) for x in os.getloadavg()],
            "other_labs": sorted({n.split("-")[0] for n in names} - {mine})}


def _audit(st: dict, event: str, session: int) -> float:
    hits = [a["t"] for a in st["audit"] if a.get("event") == event and a.get("session") == session]
    if not hits:
        raise RuntimeError(f"no {event!r} audit entry for session {session}: {st['audit'][-6:]}")
    return hits[-1]


def _measure_a(b: LabDriver, add) -> None:
    """One of acme's sessions: tap -> desk queue, a held job, owner's tap -> document, then dropped."""
    from lab.services import org_agents
    from lab.services.engine import printed_documents

    t_in, t_queue = b.tap_open(ORG_A, OWNER_A, lambda: b.desk_queue(ORG_A), random_phase=True, poll_s=POLL_S)
    wait_for(lambda: b.ready(ORG_A), 10, "ready", 0.005)
    st = b.status()
    number = b.session_number(ORG_A)
    t_tap, t_prof = _audit(st, "tap", number), _audit(st, "profile", number)
    t_up, t_ready = _audit(st, "tunnel-up", number), _audit(st, "ready", number)
    t_seen = min(m["since"] for m in org_agents.gateway_mfps(b.lab, ORG_A)["mfps"])
    add("queue.card", t_tap - t_in)
    add("queue.lookup", t_prof - t_tap)
    add("queue.ike", t_up - t_prof)
    add("queue.print_service", t_ready - t_up)
    add("queue.desk_queue", t_queue - max(t_ready, t_seen))
    add("tap_to_desk_queue", t_queue - t_in)
    add("card_event_to_desk_queue", t_queue - t_tap)

    org_agents.print_file(b.lab, ORG_A, OWNER_A, DOC)
    wait_for(lambda: b.sessions()[ORG_A]["held_jobs"], 30, "the held job", 0.005)
    n = len(printed_documents(b.lab))
    t_in, _ = b.present(ORG_A, OWNER_A, lambda: len(printed_documents(b.lab)) > n)
    t_doc = printed_documents(b.lab)[n]["at"]
    st = b.status()
    t_tap, t_yes = _audit(st, "tap", number), _audit(st, "auth-accepted", number)
    add("doc.card", t_tap - t_in)
    add("doc.auth", t_yes - t_tap)
    add("doc.release", t_doc - t_yes)
    add("owner_tap_to_document", t_doc - t_in)
    add("card_event_to_document", t_doc - t_tap)
    wait_for(lambda: b.sessions()[ORG_A]["state"] == "ready", 10, "ready again", 0.005)

    t_drop, purged = b.close(ORG_A)
    if purged:
        add("drop_to_purge_verified", purged["t"] - t_drop)


def _paths(b: LabDriver, runs: int) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {"one_open": {}, "three_open": {}}
    others_open = False
    for i in range(runs):
        for mode in (("one_open", "three_open") if i % 2 == 0 else ("three_open", "one_open")):
            want = mode == "three_open"
            if want != others_open:
                for org, user in OTHERS:
                    if want:
                        b.open_with_job(org, user)
                    else:
                        b.close(org)
                others_open = want
            b.at_rest()
            open_now = sorted(b.sessions())
            if open_now != ([o for o, _ in OTHERS] if want else []):
                raise RuntimeError(f"{mode}: sessions open before acme's tap: {open_now}")
            _measure_a(b, lambda k, v, m=mode: out[m].setdefault(k, []).append(v))
            time.sleep(1.0)  # the next person taps seconds after a session ended
    if others_open:
        for org, _ in OTHERS:
            b.close(org)
    return out


def _memory(b: LabDriver) -> dict:
    """Daemon + descendants with 0, 1, 2, 3 sessions open (each with a held job)."""
    orgs = ((ORG_A, OWNER_A), *OTHERS)
    steps = []
    for k in range(len(orgs) + 1):
        if k:
            b.open_with_job(*orgs[k - 1])
        b.at_rest()
        t = proc_memory.tree(b.pid)
        groups = proc_memory.by_netns(t)
        sessions = b.sessions()
        named = {s["tunnel"]["sandbox"]: org for org, s in sessions.items()}
        per_session = {named[g["sandbox"]]: {"sandbox": g["sandbox"], "kinds": g["kinds"], "rss_kib": g["rss_kib"],
                                             "pss_kib": g["pss_kib"]}
                       for g in groups.values() if g["sandbox"] in named}
        spare = [g for g in groups.values() if g["sandbox"] not in named]  # the device's domain, the spare
        steps.append({"sessions": k, "open": sorted(sessions), **proc_memory.totals(t),
                      "per_session": per_session, "device_and_spare": spare, "processes": t["processes"]})
    for org, _ in reversed(orgs):
        b.close(org)
    deltas = [{"rss_kib": steps[k]["total_rss_kib"] - steps[k - 1]["total_rss_kib"],
               "pss_kib": steps[k]["total_pss_kib"] - steps[k - 1]["total_pss_kib"],
               "daemon_rss_kib": steps[k]["daemon_rss_kib"] - steps[k - 1]["daemon_rss_kib"],
               "daemon_pss_kib": steps[k]["daemon_pss_kib"] - steps[k - 1]["daemon_pss_kib"]}
              for k in range(1, len(steps))]
    n = len(deltas)
    return {
        "steps": steps,
        "deltas": deltas,
        "per_extra_session": {
            "rss_mib": round(sum(d["rss_kib"] for d in deltas) / n / 1024, 1),
            "pss_mib": round(sum(d["pss_kib"] for d in deltas) / n / 1024, 1),
            "daemon_rss_mib": round(sum(d["daemon_rss_kib"] for d in deltas) / n / 1024, 2),
            "aim_rss_mib": 25,
        },
    }


def _footprint(b: LabDriver, sessions: int, every: int = 10) -> dict:
    """`sessions` sessions opened and closed in turn; daemon and descendants sampled every `every`."""
    orgs = ((ORG_A, OWNER_A), *OTHERS)
    samples = []

    def sample(done: int) -> None:
        t = proc_memory.tree(b.pid)
        tot = proc_memory.totals(t)
        samples.append({"sessions": done, **{k: v for k, v in tot.items() if k != "by_kind"},
                        "kinds": {k: v["n"] for k, v in tot["by_kind"].items()}})

    b.at_rest()
    sample(0)
    t0 = time.monotonic()
    last_tap = 0.0
    for i in range(sessions):
        org, user = orgs[i % len(orgs)]
        time.sleep(max(0.0, last_tap + TAP_EVERY_S - 0.45 - time.monotonic()))  # present() waits 0.45 s
        last_tap = time.monotonic() + 0.45
        b.tap_open(org, user)
        b.drop(org)
        wait_for(lambda: org not in b.sessions(), 30, f"{org}'s purge", 0.01)
        sampled = (i + 1) % every == 0 or i + 1 == sessions
        b.at_rest(0.5 if sampled else 0.0)  # the next person taps after the spare is rebuilt
        if sampled:
            sample(i + 1)
    wall = time.monotonic() - t0
    later = [s for s in samples if s["sessions"] >= every] or samples

    def per_session(key: str) -> float:
        return round(proc_memory.slope([s["sessions"] for s in later], [s[key] for s in later]), 3)

    slopes = {k: per_session(k) for k in ("daemon_rss_kib", "daemon_pss_kib", "descendants_rss_kib",
                                           "descendants_pss_kib", "total_pss_kib", "descendants")}
    return {"sessions": sessions, "wall_s": round(wall, 1), "samples": samples,
            "slope_per_session": slopes,
            "daemon_growth_kib_after_10th": later[-1]["daemon_rss_kib"] - later[0]["daemon_rss_kib"],
            # a 4 KiB page per session would be a leak of ~400 KiB over 100 sessions
            "flat": abs(slopes["daemon_rss_kib"]) < 4.0 and abs(slopes["descendants"]) < 0.01}


def _keep(lab, name: str) -> None:
    """The lab's logs (the firmware's journal: each purge's steps in ms) kept in bench/results/`name`."""
    kept = Path(__file__).parent / "results" / name
    shutil.rmtree(kept, ignore_errors=True)
    shutil.copytree(lab.layout.logs_dir, kept)
    print(f"the lab's logs: {kept}", file=sys.stderr)


def run(runs: int, sessions: int, keep_logs: bool = False) -> dict:
    os.environ.setdefault("TP_LAB_PREFIX", "tpbm")
    from lab.lab import Lab
    from lab.options import LabOptions

    before = _load()
    opts = LabOptions(extra_orgs=len(OTHERS) - 1)
    Lab(options=opts).down()
    lab = Lab(options=opts)
    lab.up()
    b = None
    try:
        b = LabDriver(lab)
        memory = _memory(b)
        paths = _paths(b, runs)
        footprint = _footprint(b, sessions) if sessions else None
    except Exception:
        _keep(lab, "sessions_many-failed-logs")
        raise
    else:
        if keep_logs:
            _keep(lab, "sessions_many-logs")
    finally:
        lab.down()
    res = {"orgs": [ORG_A, *(o for o, _ in OTHERS)], "load_before": before, "load_after": _load(),
           "paths": {m: {k: summary(v) for k, v in p.items()} for m, p in paths.items()},
           "raw_ms": {m: {k: [round(x * 1000, 2) for x in v] for k, v in p.items()} for m, p in paths.items()}}
    res["ratios_3_over_1"] = {
        k: {"median": round(res["paths"]["three_open"][k]["median_ms"] / res["paths"]["one_open"][k]["median_ms"], 2),
            "p90": round(res["paths"]["three_open"][k]["p90_ms"] / res["paths"]["one_open"][k]["p90_ms"], 2)}
        for k in RATIO_OF if k in res["paths"]["one_open"] and res["paths"]["one_open"][k]["median_ms"] > 0}
    res["memory"] = memory
    res["failed_taps"] = b.failures  # sessions that did not open at a tap (tapped again)
    res["spare_not_back_in_10_s"] = b.unrested
    res["footprint"] = footprint
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sessions_many")
    p.add_argument("--runs", type=int, default=10, help="acme's sessions measured per mode (one open, three open)")
    p.add_argument("--sessions", type=int, default=100, help="sessions opened and closed for the footprint (0: none)")
    p.add_argument("--keep-logs", action="store_true", help="keep the lab's logs in bench/results/sessions_many-logs")
    args = p.parse_args(argv)
    res = run(args.runs, args.sessions, args.keep_logs)
    for mode in ("one_open", "three_open"):
        print(f"-- acme's session, {mode.replace('_', ' ')}")
        print(table(res["paths"][mode]))
    for k, v in res["ratios_3_over_1"].items():
        print(f"ratio 3-open / 1-open {k}: median {v['median']}, p90 {v['p90']}")
    for s in res["memory"]["steps"]:
        print(f"{s['sessions']} sessions: daemon RSS {s['daemon_rss_kib']} KiB PSS {s['daemon_pss_kib']} KiB; "
              f"+ {s['descendants']} descendants: total RSS {s['total_rss_kib']} KiB, PSS {s['total_pss_kib']} KiB")
    pe = res["memory"]["per_extra_session"]
    print(f"per extra session: RSS {pe['rss_mib']} MiB, PSS {pe['pss_mib']} MiB (daemon {pe['daemon_rss_mib']} MiB);"
          f" aim {pe['aim_rss_mib']} MiB")
    fp = res["footprint"]
    if fp:
        print(f"footprint over {fp['sessions']} sessions ({fp['wall_s']} s): slope per session "
              f"{fp['slope_per_session']}; flat={fp['flat']}")
    if res["failed_taps"] or res["spare_not_back_in_10_s"]:
        print(f"taps whose session did not open: {res['failed_taps']}; spare not back in 10 s: "
              f"{res['spare_not_back_in_10_s']} times")
    print(f"load before {res['load_before']}, after {res['load_after']}")
    print(f"-> {write('sessions_many', res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
