"""The kernel network settings the MFP runs with, and their check.

The device routes for one purpose only: each session's sandbox reaches its org's VPN gateway
through the device (IKE, NAT-T and ESP, masqueraded to the uplink: `hal.sandbox.forwarding`), and
that is forwarding. Otherwise it is a host, never a router, and answers ARP only for addresses on
the interface asked:
    net.ipv4.ip_forward = 1                 the sandboxes' doors, and nothing else (see below)
    net.ipv6.conf.{all,default}.forwarding = 0     the doors are IPv4
    net.ipv4.conf.{all,default}.send_redirects = 0       a router's habits a host must not have:
    net.ipv4.conf.{all,default}.accept_redirects = 0     no ICMP redirects sent or obeyed, no
    net.ipv4.conf.{all,default}.accept_source_route = 0  source-routed packets
    net.ipv4.conf.{all,default}.arp_ignore = 1     answer ARP only for the receiving interface's
    net.ipv4.conf.{all,default}.arp_announce = 2   addresses (libipsec's virtual IP sits on ipsec0)
    net.ipv4.conf.{all,default}.rp_filter = 1      strict reverse path: a LAN packet with a tunnel
                                                   source is dropped before the firewall sees it

Why forwarding is safe: what the kernel may route, the device firewall decides. Its forward chain
(`inet tenantprint`, `hal.net.firewall`) has policy drop and accepts only packets that the
sandboxes' table marked as a door's (DOOR_MARK, set per packet in both directions by a chain that
runs before it and drops everything else), and only between a sandbox link and another interface.
No mark, no forwarding: with the sandboxes' table absent nothing is forwarded at all. The ICMP
errors a router sends before the forward hook (TTL exceeded, unreachable) are dropped in the
firewall's output chain; redirects are off here.

How the kernel combines `all` with an interface's own value differs per setting: the maximum for
arp_ignore, arp_announce and rp_filter, either of the two for send_redirects (and for
accept_redirects on an interface that does not forward), both for accept_source_route. So `all`
decides for every interface except where an existing interface's own rp_filter is higher (2, loose)
or its own send_redirects or accept_redirects is on: hence the `net.ipv4.conf.*.` lines in the
image's file (`sysctl_d()`), and `mismatches()` checks every interface for those three. Interfaces
made later (a sandbox's link, ipsec0) take `default`'s values.

The image ships `sysctl_d()` as /etc/sysctl.d/90-tenantprint.conf and the firmware's unit
applies it again before each start; the firmware `mismatches()` them at start and at every purge's
check. `/proc/sys/net` shows the reading process's network namespace: `netns` reads another one.
"""

from __future__ import annotations

import fnmatch
import glob
import subprocess

from hal.net import NetError, ns_argv

# In this order: writing ip_forward also rewrites every interface's `forwarding` and all's
# accept_redirects, so the settings after it have the last word.
REQUIRED: dict[str, str] = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "0",
    "net.ipv6.conf.default.forwarding": "0",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
    "net.ipv4.conf.all.accept_redirects": "0",
    "net.ipv4.conf.default.accept_redirects": "0",
    "net.ipv4.conf.all.accept_source_route": "0",
    "net.ipv4.conf.default.accept_source_route": "0",
    "net.ipv4.conf.all.arp_ignore": "1",
    "net.ipv4.conf.default.arp_ignore": "1",
    "net.ipv4.conf.all.arp_announce": "2",
    "net.ipv4.conf.default.arp_announce": "2",
    "net.ipv4.conf.all.rp_filter": "1",
    "net.ipv4.conf.default.rp_filter": "1",
}

# Every interface's own value of these must be one of the allowed ones (it would win over `all`'s),
# value written by the image's glob line and by `apply`.
PER_INTERFACE: dict[str, tuple[str, tuple[str, ...]]] = {
    "rp_filter": ("1", ("0", "1")),       # 2 (loose, systemd's default) would win over all=1
    "send_redirects": ("0", ("0",)),      # either of all and the interface sends redirects
    "accept_redirects": ("0", ("0",)),    # either, on an interface whose forwarding is off
}
_IFACE = "/proc/sys/net/ipv4/conf/*/"


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
    and every interface whose own rp_filter, send_redirects or accept_redirects would win over
    `all`'s."""
    values = _read_paths([_path(k) for k in required] + [_IFACE + name for name in PER_INTERFACE], netns)
    out = []
    for k, v in required.items():
        have = values.get(_path(k))
        if have != v:
            out.append(f"{k}={have if have is not None else 'missing'} (want {v})")
    checked = {_path(k) for k in required}
    for path, have in sorted(values.items()):
        for name, (want, allowed) in PER_INTERFACE.items():
            if path not in checked and fnmatch.fnmatch(path, _IFACE + name) and have not in allowed:
                out.append(f"{path[len('/proc/sys/'):].replace('/', '.')}={have} (want {want})")
    return out


def apply(netns: str | None = None, required: dict[str, str] = REQUIRED) -> None:
    """Write the required settings (the lab's stand-in for the unit; a device's image does this)."""
    script = "".join(f"echo {v} > {_path(k)}\n" for k, v in required.items())
    # every existing interface too, as the image's glob lines do (its own value could win over all's)
    script += "".join(f'for f in {_IFACE}{name}; do echo {want} > "$f"; done\n'
                      for name, (want, _) in PER_INTERFACE.items())
    try:
        proc = subprocess.run(ns_argv(netns, ["sh", "-ec", script]), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetError(f"setting sysctls: {exc}") from None
    if proc.returncode != 0:
        raise NetError(f"setting sysctls: {proc.stderr.strip()}")


def sysctl_d() -> str:
    """The sysctl.d file the image ships (systemd-sysctl syntax)."""
    lines = ["# tenantprint MFP: routes only the sandboxes' doors, which the device firewall's forward chain",
             "# alone decides (hal/net/sysctls.py, hal/net/firewall.py; checked by the firmware).",
             *[f"{k} = {v}" for k, v in REQUIRED.items()],
             "# an existing interface's own value would win over all's (rp_filter=2 is systemd's default)",
             *[f"net.ipv4.conf.*.{name} = {want}" for name, (want, _) in PER_INTERFACE.items()]]
    return "\n".join(lines) + "\n"
