"""The sandbox itself: a named network namespace and a persistent mount namespace (see the package
docstring for what they hold), built with `ip`, `unshare`, `nsenter` and `mount` (three process
chains), torn down with syscalls and verified from the device's side (`hal.sandbox.mounts` for
the mounts, `hal.sandbox.inside` for processes and sockets, `hal.sandbox.forwarding` for the door).

Measured here (tests/integration/test_sandbox.py, `-s`): create 50-100 ms (about 25 process starts
are most of it: off a tap's path when a spare sandbox is made ahead), destroy ~35 ms.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import select
import socket
import subprocess
import time
from pathlib import Path

from hal.net import ns_argv
from hal.sandbox import (DEFAULT_LINK_NET, DEFAULT_RUN_ROOT, SandboxConfigError, SandboxError, SandboxExists,
                         SandboxSetupError, SandboxUnavailable, check_gateway, check_name, link_for, veth_name)
from hal.sandbox.forwarding import Forwarding, check_ifname
from hal.sandbox.inside import (call_in_netns, holders, interface_exists, own_sockets_in, processes_in,
                                socket_in_netns, stop_processes)
from hal.sandbox.mounts import (SANDBOX_MOUNTS, bind_handle, code_paths_under_tmp, detach, foreign_mounts,
                               mountpoints, prepare_run_root, unmount)

_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
NETNS_DIR = Path("/run/netns")
_RUN_ROOT = re.compile(r"^/[A-Za-z0-9._/-]*$")  # the mount script splits paths on whitespace

# In the device's network namespace (and the caller's mount namespace): the netns, the run_dir
# tmpfs, the veth pair (born with its far end in the sandbox), the device side's address.
_DEVICE_SIDE = r"""
name=$1 veth=$2 run_dir=$3 size=$4 device_cidr=$5
ip netns add "$name"
mkdir -p "$run_dir"
mount -n -t tmpfs -o "mode=0711,size=${size}m,nosuid,nodev,noexec" tenantprint-sandbox "$run_dir"
ip link add "$veth" type veth peer name eth0 netns "$name"
v6="/proc/sys/net/ipv6/conf/$veth/disable_ipv6"; if [ -e "$v6" ]; then echo 1 > "$v6"; fi
echo 1 > "/proc/sys/net/ipv4/conf/$veth/rp_filter"
ip addr add "$device_cidr" dev "$veth"
ip link set "$veth" up
"""

# Then, in the sandbox's network namespace, its kernel settings and its side of the link
# (`sandbox_batch` in TP_LINK_BATCH); then it holds the new mount namespace until the device has
# bound its handle (stdin closes). The bind is the device's, made once the namespace is complete:
# unshare(1)'s own `--mount=<file>`, which binds right after unshare(2), failed with EINVAL inside
# a lab host (a non-initial mount namespace) once a netns handle existed there (kernel 6.18).
_SANDBOX_SIDE = SANDBOX_MOUNTS + r"""
for key in ipv4/ip_forward ipv6/conf/all/forwarding ipv6/conf/default/forwarding; do
  echo 0 > "/proc/sys/net/$key"
done
for conf in all default; do
  echo 1 > "/proc/sys/net/ipv4/conf/$conf/rp_filter"
  echo 1 > "/proc/sys/net/ipv4/conf/$conf/arp_ignore"
  echo 2 > "/proc/sys/net/ipv4/conf/$conf/arp_announce"
done
for conf in default eth0; do  # (no such files on a kernel booted with ipv6.disable=1)
  if [ -e "/proc/sys/net/ipv6/conf/$conf" ]; then echo 1 > "/proc/sys/net/ipv6/conf/$conf/disable_ipv6"; fi
done
printf '%s' "$TP_LINK_BATCH" | ip -b -
echo ready
read -r _ || true
"""

# What `settings()` reads in a sandbox after create (/proc/sys/net shows the reading thread's
# network namespace).
SANDBOX_SYSCTLS = {
    "net/ipv4/ip_forward": "0", "net/ipv6/conf/all/forwarding": "0",
    "net/ipv4/conf/all/rp_filter": "1", "net/ipv4/conf/default/rp_filter": "1",
    "net/ipv4/conf/all/arp_ignore": "1", "net/ipv4/conf/all/arp_announce": "2",
    "net/ipv6/conf/eth0/disable_ipv6": "1",
}


def sandbox_batch(link) -> str:
    """Pure: the `ip -b` commands that configure the sandbox's side of `link`."""
    return (f"link set lo up\naddr add {link.sandbox_ip}/{link.prefixlen} dev eth0\nlink set eth0 up\n"
            f"route add default via {link.device_ip} dev eth0\n")


def _run(argv: list[str], what: str, stdin: str | None = None, timeout: float = 15) -> None:
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, env=_ENV)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"{what}: {exc}") from None
    if proc.returncode != 0:
        raise SandboxError(f"{what}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")


def _remove(remove) -> None:
    """`remove()` (a path's unlink or rmdir), where a path that is not there is fine."""
    try:
        remove()
    except (FileNotFoundError, NotADirectoryError):
        pass


class Sandbox:
    """One session's sandbox. `device_netns`: the network namespace of the device's domain (the lab's
    `office`, a test's own), None for the caller's own. Not thread-safe: one owner drives it."""

    def __init__(self, name: str, index: int, *, link_net: str = DEFAULT_LINK_NET,
                 run_root: str | Path = DEFAULT_RUN_ROOT, uplink: str | None = None,
                 device_netns: str | None = None, run_size_mb: int = 64, tmp_size_mb: int = 64,
                 stop_timeout_s: float = 3.0):
        self.name = check_name(name)
        self.index = index
        self.link = link_for(link_net, index)
        self.link_net = ipaddress.IPv4Network(link_net)
        self.veth = veth_name(index)
        if uplink is not None:
            try:
                check_ifname(uplink)
            except SandboxError:
                raise SandboxConfigError(f"invalid uplink interface {uplink!r}") from None
        self.uplink = uplink
        if not (isinstance(run_size_mb, int) and 1 <= run_size_mb <= 4096 and isinstance(tmp_size_mb, int)
                and 1 <= tmp_size_mb <= 4096):
            raise SandboxConfigError("run_size_mb and tmp_size_mb must be 1..4096")
        self.run_size_mb, self.tmp_size_mb = run_size_mb, tmp_size_mb
        self.run_root = Path(run_root)
        if not _RUN_ROOT.match(str(self.run_root)):
            raise SandboxConfigError(f"run_root {run_root!r} must be an absolute path of [A-Za-z0-9._/-]")
        self.run_dir = self.run_root / self.name
        self.mnt_handle = self.run_root / f"{self.name}.mnt"
        self.netns_path = NETNS_DIR / self.name
        self.device_netns = device_netns
        self.stop_timeout_s = stop_timeout_s
        self.forwarding = Forwarding(device_netns)
        self.gateway: ipaddress.IPv4Address | None = None
        self._net_inode: int | None = None
        self._mnt_inode: int | None = None

    def __repr__(self) -> str:
        return f"Sandbox({self.name!r}, {self.index}, link={self.link.network})"

    # -- building ----------------------------------------------------------------------------

    def _device_ns_path(self) -> str | None:
        return None if self.device_netns is None else str(NETNS_DIR / self.device_netns)

    def _present(self) -> list[str]:
        """The parts of this sandbox (or of another one with this index) that exist now."""
        mounts = mountpoints()
        out = [str(p) for p in (self.netns_path, self.mnt_handle, self.run_dir) if p.exists() or str(p) in mounts]
        try:
            if interface_exists(self._device_ns_path(), self.veth):
                out.append(f"interface {self.veth}")
        except OSError as exc:
            raise SandboxSetupError(f"sandbox {self.name}: the device's network namespace: {exc}") from None
        return out

    def create(self) -> None:
        """Build the sandbox (see the package docstring). Raises SandboxExists when any part of it is
        already there, SandboxSetupError (after tearing down what it built) when a step fails."""
        present = self._present()
        if present:
            raise SandboxExists(f"sandbox {self.name}: already present: {', '.join(present)}")
        step = "forwarding table"
        try:
            self.forwarding.install()
            self.forwarding.add_link(self.veth)  # before the link exists: it is born closed
            step = "run root"
            prepare_run_root(self.run_root)
            step = "network namespace, run_dir, link"
            _run(ns_argv(self.device_netns, ["sh", "-ec", _DEVICE_SIDE, "sh", self.name, self.veth,
                                             str(self.run_dir), str(self.run_size_mb),
                                             f"{self.link.device_ip}/{self.link.prefixlen}"]), step)
            self._net_inode = os.stat(self.netns_path).st_ino
            step = "mount namespace"
            self._build_mount_ns()
            self._mnt_inode = os.stat(self.mnt_handle).st_ino
        except (SandboxError, OSError) as exc:
            problems = self.destroy()
            raise SandboxSetupError(f"sandbox {self.name}: {step}: {exc}", problems) from None

    def _build_mount_ns(self, timeout: float = 15) -> None:
        argv = ["unshare", "--mount", "--propagation", "private", "nsenter", f"--net={self.netns_path}", "--",
                "sh", "-ec", _SANDBOX_SIDE, "sh", str(self.run_dir), str(self.run_root), str(self.tmp_size_mb),
                *code_paths_under_tmp()]
        env = dict(_ENV, TP_LINK_BATCH=sandbox_batch(self.link))
        with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env) as proc:  # unshare execs nsenter execs sh: one pid throughout
            try:
                ready = bool(select.select([proc.stdout], [], [], timeout)[0]) and proc.stdout.readline() == b"ready\n"
                if ready:
                    with open(f"/proc/{proc.pid}/mountinfo") as f:
                        foreign = foreign_mounts(f.read(), self.run_root, code_paths_under_tmp())
                    if foreign:
                        raise SandboxError(f"inherited mounts left inside: {', '.join(foreign)}")
                    self.mnt_handle.touch(mode=0o600)
                    bind_handle(proc.pid, self.mnt_handle)
            finally:
                proc.stdin.close()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()  # our own child, by its pid
                    proc.wait()
            if not ready or proc.returncode != 0:
                err = proc.stderr.read().decode(errors="replace").strip()[-300:]
                raise SandboxError(f"exit {proc.returncode}: {err or 'no answer'}")

    def exists(self) -> bool:
        return self.netns_path.exists() and str(self.mnt_handle) in mountpoints()

    # -- using -------------------------------------------------------------------------------

    def argv(self, cmd: list[str]) -> list[str]:
        """`cmd` wrapped to run inside the sandbox (its network and mount namespaces; cwd /)."""
        return ["nsenter", f"--net={self.netns_path}", f"--mount={self.mnt_handle}", "--", *cmd]

    def call_in(self, fn, *args):
        """`fn(*args)` on a short-lived thread inside the sandbox's network namespace (not its mount
        namespace: files are reached through `run_dir`). Returns its result or raises its error."""
        if not self.netns_path.exists():
            raise SandboxUnavailable(f"sandbox {self.name} does not exist")
        return call_in_netns(str(self.netns_path), fn, *args)

    def socket_in(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0) -> socket.socket:
        """A socket of the calling process that lives in the sandbox's network namespace. Close it
        before `destroy`: an open one keeps the namespace alive (destroy reports it)."""
        if not self.netns_path.exists():
            raise SandboxUnavailable(f"sandbox {self.name} does not exist")
        return socket_in_netns(str(self.netns_path), family, type, proto)

    def settings(self) -> dict[str, str]:
        """The sandbox's kernel settings that `SANDBOX_SYSCTLS` names, as they read now (a key the
        kernel lacks, IPv6's without IPv6, is left out)."""
        def read() -> dict[str, str]:
            out = {}
            for key in SANDBOX_SYSCTLS:
                try:
                    with open(f"/proc/sys/{key}") as f:
                        out[key] = f.read().strip()
                except FileNotFoundError:
                    pass
            return out
        return self.call_in(read)

    # -- the door ----------------------------------------------------------------------------

    def allow_gateway(self, address: str) -> None:
        """Let the sandbox reach `address` (an IPv4 literal) with IKE, NAT-T and ESP, masqueraded to
        the uplink's address (the uplink given, else the interface the device routes the gateway
        by); replaces any earlier gateway of this sandbox."""
        gateway = check_gateway(address, self.link_net)
        if not self.netns_path.exists():
            raise SandboxUnavailable(f"sandbox {self.name} does not exist")
        uplink = self.uplink or self._route_uplink(gateway)
        self.forwarding.open_door((self.veth, str(self.link.sandbox_ip), str(gateway), uplink))
        self.gateway = gateway

    def forget_gateway(self) -> None:
        """Close the sandbox's door (idempotent): nothing leaves it any more, established flows included."""
        self.forwarding.close_doors(self.veth)
        self.gateway = None

    def _route_uplink(self, gateway) -> str:
        try:
            proc = subprocess.run(ns_argv(self.device_netns, ["ip", "-j", "route", "get", str(gateway)]),
                                  capture_output=True, text=True, timeout=5, env=_ENV)
            dev = json.loads(proc.stdout)[0]["dev"] if proc.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, ValueError, LookupError):
            dev = None
        if not dev or dev == "lo" or dev.startswith("tpv"):
            raise SandboxError(f"the device has no uplink route to {gateway}")
        return dev

    # -- tearing down ------------------------------------------------------------------------

    def _inodes(self) -> tuple[int | None, int | None]:
        """The namespaces' inodes: read from their handles while mounted, else remembered."""
        mounts = mountpoints()
        for attr, path in (("_net_inode", self.netns_path), ("_mnt_inode", self.mnt_handle)):
            try:
                if str(path) in mounts:
                    setattr(self, attr, os.stat(path).st_ino)
            except OSError:
                pass
        return self._net_inode, self._mnt_inode

    def destroy(self) -> list[str]:
        """Tear the sandbox down; every step runs even when an earlier one failed. Returns what went
        wrong (empty: all steps did their part); `leftovers()` is the verification."""
        problems: list[str] = []

        def step(what: str, fn) -> None:
            try:
                problems.extend(f"{what}: {p}" for p in (fn() or []))
            except Exception as exc:  # every step runs; each failure is reported
                problems.append(f"{what}: {exc}")

        net_inode, mnt_inode = self._inodes()
        step("close the door", self.forget_gateway)
        step("stop processes", lambda: [f"still running: {p}" for p in
                                        stop_processes(net_inode, mnt_inode, self.stop_timeout_s)])
        step("mount namespace", self._drop_mount_ns)
        step("run_dir", self._drop_run_dir)
        step("network namespace", self._drop_netns)
        step("link", self._drop_link)
        step("links element", lambda: self.forwarding.remove_link(self.veth))
        return problems

    def _drop_mount_ns(self) -> list[str]:
        out = unmount(self.mnt_handle)
        if not out:
            _remove(self.mnt_handle.unlink)
        return out

    def _drop_run_dir(self) -> list[str]:
        out = unmount(self.run_dir)
        if str(self.run_dir) not in mountpoints():
            _remove(self.run_dir.rmdir)  # not empty without its tmpfs: something wrote beside it: said
        return out

    def _drop_netns(self) -> list[str]:
        out = detach(self.netns_path)
        if not out:
            _remove(self.netns_path.unlink)
        return out

    def _drop_link(self, wait_s: float = 2.0) -> list[str]:
        """The link goes with the namespace; if it stays, something still holds the namespace."""
        device = self._device_ns_path()
        deadline = time.monotonic() + wait_s
        while interface_exists(device, self.veth) and time.monotonic() < deadline:
            time.sleep(0.002)
        if not interface_exists(device, self.veth):
            return []
        out = [f"{self.veth} outlived the namespace ({self._holders() or 'held by an unknown reference'})"]
        _run(ns_argv(self.device_netns, ["ip", "link", "del", self.veth]), f"ip link del {self.veth}")
        return out

    def _holders(self) -> str:
        return ", ".join(holders(self._net_inode)) if self._net_inode is not None else ""

    def leftovers(self) -> list[str]:
        """What remains of the sandbox (empty when nothing does): namespace handles, mounts,
        processes, our own sockets in its network namespace, the link, its nftables elements."""
        out = []
        mounts = mountpoints()
        if self.netns_path.exists() or str(self.netns_path) in mounts:
            out.append(f"netns {self.name}")
        for path in (self.mnt_handle, self.run_dir):
            if str(path) in mounts:
                out.append(f"mount {path}")
            elif path.exists():
                out.append(f"path {path}")
        out += [f"mount {m}" for m in mounts if m.startswith(f"{self.run_dir}/")]
        out += [f"process {pid}" for pid, _ in processes_in(self._net_inode, self._mnt_inode)]
        if self._net_inode is not None:
            out += [f"socket fd {fd} in its netns" for fd in own_sockets_in(self._net_inode)]
        if interface_exists(self._device_ns_path(), self.veth):
            out.append(f"interface {self.veth}")
        elements = self.forwarding.elements()
        if self.veth in elements["links"]:
            out.append(f"nft links element {self.veth}")
        out += [f"nft door {' . '.join(d)}" for d in elements["doors"] if d[0] == self.veth]
        return out
