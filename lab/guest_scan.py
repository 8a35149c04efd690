"""`lab scan-secrets` inside the MFP guest (`lab up --mfp vm`): this file is run there as it is, by
the guest's own python3 (`ssh ... python3 -`, the file on stdin: the image holds no lab code), with
the pattern to look for appended by `lab.scan.scan_guest` (`PATTERN = ...` at the end). Standard
library only.

It looks where `lab.scan.scan` looks on the office host, as the guest lays them out: files in the
places a device writes (/run, /tmp, /var, /etc, /root, /boot/firmware, /opt/tenantprint but its
venv), every mount another process's mount namespace has and this one has not (the firmware's
PrivateMounts: its session tmpfs and its sandboxes' run dirs), the memory and argv of every process
but this scan and the ssh session that runs it (they carry the pattern), and the inventory of every
sandbox charon's VICI socket. It prints one JSON document: {"findings": [{where, kind, found}],
"processes_scanned", "mounts_scanned"}; `found` holds the matched bytes (latin-1), for the lab to
name (a PIN is never printed by the lab: `lab.scan` names whose it is).
"""

import json
import os
import re
import subprocess

PATTERN = None  # set by the lab: the bytes regular expression of lab.scan.SECRET
MARKERS = ()    # set by the lab: plain substrings, one of which every match contains
ROOTS = ("/run", "/tmp", "/var", "/etc", "/root", "/home", "/boot/firmware", "/opt/tenantprint")
SKIP = ("/var/lib/apt", "/var/lib/dpkg", "/var/cache/apt", "/var/cache/debconf", "/opt/tenantprint/venv",
        "/etc/ssl/certs", "/usr/share")
MAX_FILE = 64 * 1024 * 1024


def secrets_in(rx, data: bytes) -> set:
    if not any(m in data for m in MARKERS):
        return set()
    return set(rx.findall(data))


def scan_tree(rx, root: str, skip=SKIP) -> dict:
    hits = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in skip]
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > MAX_FILE:
                    continue
                with open(path, "rb") as f:
                    found = secrets_in(rx, f.read())
            except OSError:
                continue
            if found:
                hits[path] = found
    return hits


def scan_memory(rx, pid: int) -> set:
    found = set()
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read().splitlines()
        mem = open(f"/proc/{pid}/mem", "rb", buffering=0)
    except OSError:
        return found
    with mem:
        for line in maps:
            fields = line.split()
            if len(fields) < 2 or "r" not in fields[1]:
                continue
            if len(fields) >= 6 and fields[5].startswith("[v"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                found |= secrets_in(rx, mem.read(end - start))
            except (OSError, ValueError, OverflowError):
                continue
    return found


def ancestors(pid: int) -> set:
    out = set()
    while pid > 1:
        out.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def mount_points(pid) -> set:
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            return {line.split()[4] for line in f}
    except OSError:
        return set()


def main() -> dict:
    rx = re.compile(PATTERN)
    findings = []

    def add(where, kind, found):
        if found:
            findings.append({"where": where, "kind": kind, "found": sorted(x.decode("latin-1") for x in found)})

    for root in ROOTS:
        for path, found in scan_tree(rx, root).items():
            add(path, "file", found)
    me = ancestors(os.getpid())
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in me)
    own = mount_points("self")
    seen = set()
    for pid in pids:
        for point in sorted(mount_points(pid) - own):
            if point in seen or point.startswith(("/proc", "/sys", "/dev")):
                continue
            seen.add(point)
            base = f"/proc/{pid}/root"
            for path, found in scan_tree(rx, base + point, skip=()).items():
                add(f"pid {pid} mount {path[len(base):]}", "file", found)
    scanned = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read()
        except OSError:
            continue
        scanned += 1
        add(f"pid {pid} ({comm}) argv", "cmdline", secrets_in(rx, argv))
        add(f"pid {pid} ({comm}) memory", "memory", scan_memory(rx, pid))
    sockets = {}
    for pid in pids:
        d = f"/proc/{pid}/root/run/tenantprint/sandboxes"
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            path = f"{d}/{name}/charon.vici"
            try:
                st = os.stat(path)
            except OSError:
                continue
            sockets.setdefault((st.st_dev, st.st_ino), path)
    for path in sockets.values():
        proc = subprocess.run(["swanctl", "--list-conns", "--uri", f"unix://{path}"], capture_output=True, timeout=20)
        add(f"charon VICI inventory {path}", "vici", secrets_in(rx, proc.stdout))
    return {"findings": findings, "processes_scanned": scanned, "mounts_scanned": sorted(seen),
            "vici_sockets": len(sockets)}


if __name__ == "__main__" and PATTERN is not None:
    print(json.dumps(main()))
