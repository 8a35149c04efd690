"""What lives inside a sandbox's namespaces, seen from the device: processes, our own sockets, and
work done on a thread that entered the sandbox's network namespace.

Namespaces are named by their inode (`os.stat('/run/netns/<name>').st_ino` equals the inode behind
`/proc/<pid>/ns/net` of every process in it). Processes are found through /proc and stopped by pid,
each checked against its kernel start time before every signal, so a recycled pid is never hit;
this process itself is never a candidate.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket
import threading
import time

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000
_SIOCGSKNS = 0x894C  # a socket's network namespace, as a new fd (linux/sockios.h)


def start_time(pid: int) -> int | None:
    """Process `pid`'s kernel start time (clock ticks since boot), None when there is none: with
    the pid, a process's identity (a pid alone may be recycled)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def ns_inode(pid: int, kind: str) -> int | None:
    """The inode of process `pid`'s namespace of `kind` ('net', 'mnt'); None when it has none."""
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:  # gone, or a zombie (its namespaces are released at exit)
        return None


def processes_in(net_inode: int | None, mnt_inode: int | None) -> list[tuple[int, int]]:
    """(pid, start time) of every process (but this one) in either namespace."""
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        inside = (net_inode is not None and ns_inode(pid, "net") == net_inode) or (
            mnt_inode is not None and ns_inode(pid, "mnt") == mnt_inode)
        if inside:
            start = start_time(pid)
            if start is not None:
                out.append((pid, start))
    return out


def holds(pid: int, start: int | None, mnt_inode: int | None) -> bool:
    """Whether process (`pid`, `start`) is alive and in the mount namespace `mnt_inode` (a sandbox's
    holder, checked before its /proc/<pid>/ns/mnt is used)."""
    return (start is not None and mnt_inode is not None and start_time(pid) == start
            and ns_inode(pid, "mnt") == mnt_inode)


def running(pid: int, start: int | None) -> bool:
    """Whether process (`pid`, `start`) is alive (not a zombie)."""
    return start is not None and _alive((pid, start))


def _alive(proc: tuple[int, int]) -> bool:
    if start_time(proc[0]) != proc[1]:
        return False
    try:
        with open(f"/proc/{proc[0]}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal(proc: tuple[int, int], sig: int) -> None:
    if _alive(proc):
        try:
            os.kill(proc[0], sig)
        except ProcessLookupError:
            pass


def stop_processes(net_inode: int | None, mnt_inode: int | None, timeout: float = 3.0) -> list[str]:
    """SIGTERM every process in the namespaces, SIGKILL what is left after `timeout`; a process
    started meanwhile is found on the next pass. Returns what still lives ('pid N (comm)')."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0), (signal.SIGKILL, 1.0)):
        procs = processes_in(net_inode, mnt_inode)
        if not procs:
            return []
        for proc in procs:
            _signal(proc, sig)
        deadline = time.monotonic() + wait
        while any(_alive(p) for p in procs) and time.monotonic() < deadline:
            time.sleep(0.005)
    return [f"pid {pid} ({_comm(pid)})" for pid, _ in processes_in(net_inode, mnt_inode)]


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def own_sockets_in(net_inode: int) -> list[int]:
    """The file descriptors of this process's sockets that live in that network namespace (a
    socket keeps its namespace alive after `ip netns del`)."""
    out = []
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            ns_fd = fcntl.ioctl(fd, _SIOCGSKNS, 0)
        except OSError:
            continue
        try:
            if os.fstat(ns_fd).st_ino == net_inode:
                out.append(fd)
        finally:
            os.close(ns_fd)
    return out


def holders(net_inode: int) -> list[str]:
    """Who keeps that network namespace alive: processes in it, this process's sockets in it, and
    any process's open handle of the namespace itself (reads every process's fd table: for the
    failure path, not the routine one)."""
    out = [f"pid {pid} ({_comm(pid)}) inside" for pid, _ in processes_in(net_inode, None)]
    out += [f"socket fd {fd} of this process" for fd in own_sockets_in(net_inode)]
    handle = f"net:[{net_inode}]"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") == handle:
                    out.append(f"fd {fd} of pid {entry} ({_comm(int(entry))}) holds the namespace")
            except OSError:
                pass
    return out


def enter_netns(netns_path: str) -> None:
    """Move the calling thread into the network namespace at `netns_path` (for good; the mount
    namespace stays the caller's)."""
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {netns_path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in_netns(netns_path: str, fn, *args):
    """`fn(*args)` on a short-lived thread that entered the network namespace at `netns_path`
    (setns moves only the calling thread; the mount namespace stays the caller's). Returns its
    result or raises its exception."""
    result: list = []

    def run() -> None:
        try:
            enter_netns(netns_path)
            result.append((True, fn(*args)))
        except BaseException as exc:  # handed to the caller
            result.append((False, exc))

    t = threading.Thread(target=run, name="in-sandbox")
    t.start()
    t.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value


def socket_in_netns(netns_path: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
                    proto: int = 0) -> socket.socket:
    """A socket created inside the network namespace at `netns_path`; it stays there for its life."""
    return call_in_netns(netns_path, socket.socket, family, type, proto)


def interface_exists(netns_path: str | None, name: str) -> bool:
    """Whether network interface `name` exists in that namespace (None: the caller's own)."""
    def look() -> bool:
        try:
            socket.if_nametoindex(name)
            return True
        except OSError:
            return False

    return look() if netns_path is None else call_in_netns(netns_path, look)
