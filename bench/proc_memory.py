"""The memory of a process tree, read from /proc: the firmware daemon and everything it started.

`tree(pid)` reads the daemon and each of its descendants once: RSS (`/proc/<pid>/status` VmRSS) and
PSS (`/proc/<pid>/smaps_rollup`: a page shared by n processes counts 1/n to each, so PSS adds up
across processes where RSS counts a shared library once per process), what the process is (`kind`:
keeper, charon, cupsd, holder, or its program's name) and its network namespace (a session's
processes live in its sandbox's). A process that exits while it is read is left out.

`totals(tree)` sums that up: the daemon, its descendants, and per kind.
"""

from __future__ import annotations

import os
import re

_SANDBOX_NAME = re.compile(rb"/(tps\d+)(?:/|\x00|$)")


def _field_kib(pid: int, field: str, path: str) -> int | None:
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def memory(pid: int) -> dict | None:
    """RSS and PSS of `pid` in KiB, or None when it is gone."""
    rss, pss = _field_kib(pid, "VmRSS", "status"), _field_kib(pid, "Pss", "smaps_rollup")
    if rss is None or pss is None:
        return None
    return {"rss_kib": rss, "pss_kib": pss}


def children(pid: int) -> list[int]:
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def kind(cmdline: bytes) -> str:
    """What a process is, from its command line."""
    argv = cmdline.split(b"\0")
    prog = os.path.basename(argv[0]).decode(errors="replace") if argv and argv[0] else "?"
    if b"firmware.secret_keeper" in cmdline:
        return "keeper"
    if prog in ("charon", "cupsd"):
        return prog
    if prog == "sh" and b"run_dir=" in cmdline:
        return "holder"  # the sandbox's setup shell, kept to hold its mount namespace (hal/sandbox)
    return prog


def netns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def tree(pid: int) -> dict:
    """The daemon `pid` and each of its descendants: pid, kind, netns, RSS and PSS."""
    daemon = memory(pid)
    if daemon is None:
        raise RuntimeError(f"process {pid} is gone")
    procs = []
    for p in descendants(pid):
        cmd, mem, ns = _cmdline(p), memory(p), netns(p)
        if mem is None or ns is None:
            continue
        m = _SANDBOX_NAME.search(cmd)
        procs.append({"pid": p, "kind": kind(cmd), "netns": ns, "sandbox": m.group(1).decode() if m else None, **mem})
    return {"daemon": {"pid": pid, "netns": netns(pid), **daemon}, "processes": procs}


def totals(t: dict) -> dict:
    """Sums of a `tree`: the daemon, all its descendants, daemon + descendants, and per kind."""
    procs = t["processes"]
    by_kind: dict[str, dict] = {}
    for p in procs:
        k = by_kind.setdefault(p["kind"], {"n": 0, "rss_kib": 0, "pss_kib": 0})
        k["n"] += 1
        k["rss_kib"] += p["rss_kib"]
        k["pss_kib"] += p["pss_kib"]
    d_rss, d_pss = sum(p["rss_kib"] for p in procs), sum(p["pss_kib"] for p in procs)
    return {"daemon_rss_kib": t["daemon"]["rss_kib"], "daemon_pss_kib": t["daemon"]["pss_kib"],
            "descendants": len(procs), "descendants_rss_kib": d_rss, "descendants_pss_kib": d_pss,
            "total_rss_kib": t["daemon"]["rss_kib"] + d_rss, "total_pss_kib": t["daemon"]["pss_kib"] + d_pss,
            "by_kind": dict(sorted(by_kind.items()))}


def by_netns(t: dict) -> dict[int, dict]:
    """The descendants grouped by network namespace: {inode: {"sandbox", "kinds", "rss_kib", "pss_kib"}}
    (the device's own namespace is the daemon's; a sandbox's group is named by a member's paths)."""
    groups: dict[int, dict] = {}
    for p in t["processes"]:
        g = groups.setdefault(p["netns"], {"sandbox": None, "kinds": [], "rss_kib": 0, "pss_kib": 0})
        g["sandbox"] = g["sandbox"] or p["sandbox"]
        g["kinds"].append(p["kind"])
        g["rss_kib"] += p["rss_kib"]
        g["pss_kib"] += p["pss_kib"]
    if t["daemon"]["netns"] in groups:
        groups[t["daemon"]["netns"]]["sandbox"] = "device"
    for g in groups.values():
        g["kinds"].sort()
    return groups


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0.0 with fewer than two distinct xs)."""
    n = len(xs)
    if n < 2 or len(set(xs)) < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
