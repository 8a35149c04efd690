"""The kernel network settings the MFP runs with, and their check.

The device is a host, never a router, and answers ARP only for addresses on the interface asked:
    net.ipv4.ip_forward = 0                 no routing from the coworking LAN into a tunnel
    net.ipv6.conf.{all,default}.forwarding = 0
    net.ipv4.conf.{all,default}.arp_ignore = 1     answer ARP only for the receiving interface's
    net.ipv4.conf.{all,default}.arp_announce = 2   addresses (libipsec's virtual IP sits on ipsec0)
    net.ipv4.conf.{all,default}.rp_filter = 1      strict reverse path: a LAN packet with a tunnel
                                                   source is dropped before the firewall sees it
The kernel takes the maximum of `all` and the interface's value for arp_ignore, arp_announce and
rp_filter, so `all` decides for every interface (unless one is set higher: rp_filter=2 is loose,
hence `net.ipv4.conf.*.rp_filter = 1` in the image's file, see `sysctl_d()`).

The image ships `sysctl_d()` as /usr/lib/sysctl.d/90-tenantprint.conf and the firmware's unit
applies it again before each start; the firmware `mismatches()` them at start and at every purge's
check. `/proc/sys/net` shows the reading process's network namespace: `netns` reads another one.
"""

from __future__ import annotations

import fnmatch
import glob
import subprocess

from hal.net import NetError, ns_argv

REQUIRED: dict[str, str] = {
    "net.ipv4.ip_forward": "0",
    "net.ipv6.conf.all.forwarding": "0",
    "net.ipv6.conf.default.forwarding": "0",
    "net.ipv4.conf.all.arp_ignore": "1",
    "net.ipv4.conf.default.arp_ignore": "1",
    "net.ipv4.conf.all.arp_announce": "2",
    "net.ipv4.conf.default.arp_announce": "2",
    "net.ipv4.conf.all.rp_filter": "1",
    "net.ipv4.conf.default.rp_filter": "1",
}


_IFACE_RP_FILTER = "/proc/sys/net/ipv4/conf/*/rp_filter"


def _path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def _read_paths(patterns: list[str], netns: str | None) -> dict[str, str]:
    """path -> value for every file matching the glob patterns (in `netns`: one process for all)."""
    if netns is None:
        out = {}
        for path in (p for pattern in patterns for p in sorted(glob.glob(pattern))):
            try:
                with open(path) as f:
                    out[path] = f.read().strip()
            except OSError:
                pass
        return out
    script = 'for f in $@; do [ -e "$f" ] && printf "%s=%s\\n" "$f" "$(cat "$f")"; done; true'
    try:
        proc = subprocess.run(ns_argv(netns, ["sh", "-c", script, "sh", *patterns]),
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetError(f"reading sysctls in {netns}: {exc}") from None
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def read(keys, netns: str | None = None) -> dict[str, str | None]:
    """Current values (None where the key does not exist in that namespace)."""
    values = _read_paths([_path(k) for k in keys], netns)
    return {k: values.get(_path(k)) for k in keys}


def mismatches(netns: str | None = None, required: dict[str, str] = REQUIRED) -> list[str]:
    """`key=value (want W)` for every required setting that does not hold (empty when all do),
    and every interface whose own rp_filter (2, loose) would win over `all`'s."""
    values = _read_paths([_path(k) for k in required] + [_IFACE_RP_FILTER], netns)
    out = []
    for k, v in required.items():
        have = values.get(_path(k))
        if have != v:
            out.append(f"{k}={have if have is not None else 'missing'} (want {v})")
    for path, have in sorted(values.items()):
        if fnmatch.fnmatch(path, _IFACE_RP_FILTER) and have not in ("0", "1"):
            out.append(f"{path[len('/proc/sys/'):].replace('/', '.')}={have} (want 1)")
    return out


def apply(netns: str | None = None, required: dict[str, str] = REQUIRED) -> None:
    """Write the required settings (the lab's stand-in for the unit; a device's image does this)."""
    script = "".join(f"echo {v} > {_path(k)}\n" for k, v in required.items())
    # every existing interface too, as the image's glob line does (rp_filter=2 elsewhere would win)
    script += "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 1 > \"$f\"; done\n"
    try:
        proc = subprocess.run(ns_argv(netns, ["sh", "-ec", script]), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetError(f"setting sysctls: {exc}") from None
    if proc.returncode != 0:
        raise NetError(f"setting sysctls: {proc.stderr.strip()}")


def sysctl_d() -> str:
    """The sysctl.d file the image ships (systemd-sysctl syntax)."""
    lines = ["# tenantprint MFP: a host, never a router (hal/net/sysctls.py; checked by the firmware).",
             *[f"{k} = {v}" for k, v in REQUIRED.items()],
             "# an interface's own rp_filter=2 (loose, systemd's default) would win over all=1",
             "net.ipv4.conf.*.rp_filter = 1"]
    return "\n".join(lines) + "\n"
