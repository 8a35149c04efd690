"""hal/sandbox: a session's sandbox on the MFP — its own network stack and its own /run and /tmp.

Each organization's session runs inside one: its charon, its session cupsd, its secret keeper's
auth traffic. Two orgs may use the same address ranges: separate stacks. The device's own domain
(the network namespace the firmware daemon runs in, `device_netns`) keeps the physical interface.

A sandbox is (`hal.sandbox.namespaces.Sandbox`):
- a named network namespace `<name>` (`/run/netns/<name>`), linked to the device by a veth pair:
  device side `tpv<index>`, sandbox side `eth0`, one /30 of `link_net` each (`link_for`); the
  sandbox's default route goes to the device side; the sandbox neither forwards nor answers ARP
  for other interfaces' addresses; no IPv6 on the link;
- a mount namespace made from the device's (`hal.sandbox.mounts`) and kept alive by a holder
  process (the sandbox's setup shell, our child, waiting on a pipe we keep open: it ends when we
  close it in `destroy`, or when the daemon dies), where `/run` is `run_dir` =
  `<run_root>/<name>`, a tmpfs the device sees too (so the daemon reaches
  `<run_dir>/charon.vici` without entering), `/tmp` and
  `/dev/shm` are private tmpfs, `/sys` shows the sandbox's interfaces, and nothing the device had
  mounted below /run, /tmp, /dev/shm or `run_root` (another sandbox's run_dir, a netns handle) is
  carried over: a sandbox never pins another's files or namespaces;
- one door out (`allow_gateway`): IKE (udp 500, 4500) and ESP from the sandbox to its gateway,
  masqueraded to the device's uplink address, and the replies back. Nothing else leaves, nothing
  from the device or another sandbox gets in (`hal.sandbox.forwarding`: the device's nftables table
  `inet tenantprint_sandboxes`).

Not isolated (yet): the sandbox shares the device's PID namespace, its filesystem outside
/run, /tmp and /dev/shm, and root's capabilities; a root process inside can still see and signal
other processes (and reach another sandbox's files through /proc/<pid>/root).

Use: `Sandbox(name, index, ...)` from `hal.sandbox.namespaces`; `create()`, then start programs with
`argv(cmd)` (`nsenter --net=/run/netns/<name> --mount=/proc/<holder pid>/ns/mnt -- cmd`, the
holder's identity checked first; valid until `destroy`) and reach them through `run_dir`, open
sockets inside with `socket_in()`, open the door with `allow_gateway(ip)`; `destroy()` and
`leftovers()` at the end. A record `<run_root>/<name>.json` (index, link, namespaces, holder) lives
from the first step of `create` to the last of `destroy`: after a daemon crash (the holders gone
with it), `stale_sandboxes(run_root)` names what is left and `destroy_stale(name, run_root)` tears
each down. Errors form one tree below `SandboxError`.

No namespace handle of a sandbox's mount namespace is bound anywhere (`hal.sandbox.mounts` says why:
kernel 6.18 refused such binds at random inside a lab host).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

DEFAULT_LINK_NET = "100.64.200.0/24"
DEFAULT_RUN_ROOT = "/run/tenantprint/sandboxes"
VETH_PREFIX = "tpv"  # the device side of sandbox <index>'s link: tpv<index>
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,14}$")


# -- errors -----------------------------------------------------------------------------------

class SandboxError(Exception):
    """Anything that went wrong with a sandbox; the message names the step and the cause."""


class SandboxConfigError(SandboxError):
    """A name, index, link network or gateway that cannot be used (nothing was changed)."""


class SandboxExists(SandboxError):
    """create() found parts of a sandbox of that name or index already there: destroy it first."""


class SandboxSetupError(SandboxError):
    """create() failed; what it had built was torn down again (`problems`: what the teardown
    could not remove, empty when it is all gone)."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message + (f" (teardown left: {'; '.join(problems)})" if problems else ""))
        self.problems = problems or []


class SandboxUnavailable(SandboxError):
    """The sandbox does not exist (not created, or destroyed): nothing can run inside it."""


class ForwardingError(SandboxError):
    """The sandboxes' nftables table could not be installed, verified or changed."""


# -- the link ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SandboxLink:
    """The /30 between the device and one sandbox."""

    network: ipaddress.IPv4Network
    device_ip: ipaddress.IPv4Address
    sandbox_ip: ipaddress.IPv4Address

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen


def link_for(link_net: str | ipaddress.IPv4Network, index: int) -> SandboxLink:
    """Pure: the `index`-th /30 of `link_net` (device .1, sandbox .2 of it)."""
    try:
        net = ipaddress.IPv4Network(link_net, strict=True)
    except (ValueError, TypeError) as exc:
        raise SandboxConfigError(f"link network {link_net!r}: {exc}") from None
    if net.prefixlen > 30:
        raise SandboxConfigError(f"link network {net} is smaller than one /30")
    count = 1 << (30 - net.prefixlen)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
        raise SandboxConfigError(f"sandbox index {index!r} outside 0..{count - 1} ({net} holds {count} links)")
    base = int(net.network_address) + 4 * index
    return SandboxLink(ipaddress.IPv4Network((base, 30)), ipaddress.IPv4Address(base + 1),
                       ipaddress.IPv4Address(base + 2))


def check_name(name: str) -> str:
    """Pure: `name` when it can name a sandbox (its netns, its run_dir): 1-15 characters, lowercase
    letters, digits and '-', starting with a letter."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise SandboxConfigError(f"sandbox name {name!r} must match {_NAME.pattern}")
    return name


def veth_name(index: int) -> str:
    """Pure: the device side of sandbox `index`'s link."""
    return f"{VETH_PREFIX}{index}"


def check_gateway(address, link_net: str | ipaddress.IPv4Network = DEFAULT_LINK_NET) -> ipaddress.IPv4Address:
    """Pure: `address` as a gateway a sandbox may reach: an IPv4 unicast address outside the links."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise SandboxConfigError("the gateway is not an IP address") from None
    if ip.version != 4:
        raise SandboxConfigError(f"{ip}: a sandbox reaches IPv4 gateways only")
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_link_local or ip == ipaddress.IPv4Address(
            "255.255.255.255") or ip in ipaddress.IPv4Network(link_net):
        raise SandboxConfigError(f"{ip} cannot be a VPN gateway")
    return ip


# -- the interface ----------------------------------------------------------------------------

class SessionSandbox(Protocol):
    """What the firmware uses of a sandbox (`hal.sandbox.namespaces.Sandbox` implements it)."""

    name: str
    run_dir: Path  # the sandbox's /run as the device sees it

    def create(self) -> None: ...
    def argv(self, cmd: list[str]) -> list[str]: ...
    def socket_in(self, family: int = ..., type: int = ..., proto: int = 0): ...
    def allow_gateway(self, address: str) -> None: ...
    def forget_gateway(self) -> None: ...
    def destroy(self) -> list[str]: ...
    def leftovers(self) -> list[str]: ...
