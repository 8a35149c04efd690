"""A larger initial congestion window on the tunnel's routes (strongSwan's table 220).

A desk PC's CUPS builds the MFP's queue from one Get-Printer-Attributes answer of ~9 kB that the
session cupsd writes in small pieces; with `Expect: 100-continue` that is 11 TCP segments, one more
than Linux's initial window of 10, so the last one waits a whole WAN round trip for an ACK. The
routes are charon's, installed the moment the CHILD_SA is, and a desk connects a few milliseconds
later (its gateway saw the tunnel half a round trip earlier): too soon to set the window after
`initiate` returns, and a connection keeps the route's window it was accepted with. So a watcher
follows route changes over rtnetlink and re-installs each table-220 route with `initcwnd` as soon
as charon adds it. Only the window changes: destination, device, source, protocol, scope stay.

All of it over plain netlink sockets, pyroute2 only to encode and decode the messages: pyroute2's
IPRoute starts a thread and an event loop per instance and keeps a few hundred bytes of every
request, which a daemon that lives for months cannot afford per session.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import struct
import threading

from pyroute2.netlink.rtnl import RTM_GETROUTE, RTM_NEWROUTE, RTMGRP_IPV4_ROUTE
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from hal.net import NetError
from hal.net.addresses import IPSEC_TABLE

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_DUMP = 0x1, 0x4, 0x300
_NLM_F_REPLACE, _NLM_F_CREATE = 0x100, 0x400
_ESRCH, _ENOENT = 3, 2  # the route went away before we replaced it


def needs_window(route, initcwnd: int) -> bool:
    """Pure: whether a route message is a table-220 IPv4 route without our initial window."""
    if route.get("event") != "RTM_NEWROUTE" or route.get("family") != 2:
        return False
    if (route.get("RTA_TABLE") or route.get("table")) != IPSEC_TABLE:
        return False
    metrics = route.get("RTA_METRICS")
    current = metrics.get("RTAX_INITCWND") if metrics else None
    return current != initcwnd


def widened(route, initcwnd: int) -> dict:
    """Pure: the fields and attributes of the replacing route: everything of `route` but the window."""
    attrs = [("RTA_TABLE", IPSEC_TABLE)]
    for attr in ("RTA_DST", "RTA_OIF", "RTA_PREFSRC", "RTA_GATEWAY", "RTA_PRIORITY"):
        if route.get(attr) is not None:
            attrs.append((attr, route.get(attr)))
    attrs.append(("RTA_METRICS", {"attrs": [("RTAX_INITCWND", initcwnd)]}))
    fields = {k: route[k] for k in ("family", "dst_len", "tos", "proto", "scope", "type")}
    return {**fields, "src_len": 0, "table": IPSEC_TABLE, "flags": 0, "attrs": attrs}


def replace_request(route, initcwnd: int, seq: int) -> bytes:
    """Pure: the RTM_NEWROUTE request (replace, acknowledged) that re-installs `route` with `initcwnd`."""
    msg = rtmsg()
    spec = widened(route, initcwnd)
    for k, v in spec.items():
        msg[k] = v
    msg["header"]["type"] = RTM_NEWROUTE
    msg["header"]["flags"] = _NLM_F_REQUEST | _NLM_F_ACK | _NLM_F_REPLACE | _NLM_F_CREATE
    msg["header"]["sequence_number"] = seq
    msg.encode()
    return bytes(msg.data[:msg["header"]["length"]])


def dump_request(seq: int) -> bytes:
    """Pure: RTM_GETROUTE, dump, IPv4."""
    msg = rtmsg()
    msg["family"] = socket.AF_INET
    msg["header"]["type"] = RTM_GETROUTE
    msg["header"]["flags"] = _NLM_F_REQUEST | _NLM_F_DUMP
    msg["header"]["sequence_number"] = seq
    msg.encode()
    return bytes(msg.data[:msg["header"]["length"]])


def _messages(data: bytes):
    """Pure: (type, sequence number, the message's bytes) of each whole netlink message in a datagram."""
    i = 0
    while i + 16 <= len(data):
        length, kind, _flags, seq = struct.unpack_from("=IHHI", data, i)
        if length < 16 or i + length > len(data):
            return
        yield kind, seq, data[i:i + length]
        i += (length + 3) & ~3


def acks(data: bytes) -> tuple[dict[int, int], bool]:
    """Pure: the NLMSG_ERROR answers in a datagram as {seq: errno} (0 = done), and whether a
    dump's NLMSG_DONE is in it."""
    out, done = {}, False
    for kind, seq, msg in _messages(data):
        if kind == _NLMSG_ERROR and len(msg) >= 20:
            out[seq] = -struct.unpack_from("=i", msg, 16)[0]
        elif kind == _NLMSG_DONE:
            done = True
    return out, done


class RouteWindow:
    """Keeps `initcwnd` on every table-220 IPv4 route while started (its own thread)."""

    def __init__(self, initcwnd: int = 32, netns: str | None = None):
        if not 1 <= initcwnd <= 256:
            raise ValueError("initcwnd must be between 1 and 256 segments")
        self.initcwnd = initcwnd
        self.netns = netns
        self.widened = 0  # routes re-installed so far
        self._seq = 0  # netlink sequence numbers of our requests
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None  # a pipe that cuts the follower's wait short on stop

    @property
    def thread(self) -> threading.Thread | None:
        """The thread that follows the routes, while started."""
        return self._thread

    def start(self) -> None:
        """Subscribe to route changes, widen the routes already there, and follow from then on.
        Returns once subscribed; raises NetError when rtnetlink cannot be followed."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._wake = os.pipe()
        subscribed: list = []
        ready = threading.Event()
        self._thread = threading.Thread(target=self._follow, args=(subscribed, ready), name="route-window",
                                        daemon=True)
        self._thread.start()
        ready.wait(10)
        if not subscribed or subscribed[0] is not None:
            self.stop()
            raise NetError(f"cannot follow route changes: {subscribed[0] if subscribed else 'no answer'}")

    def stop(self) -> None:
        self._stop.set()
        if self._wake is not None:
            os.write(self._wake[1], b"x")
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None

    def _widen(self, nl: socket.socket, routes) -> None:
        """Replace the routes that lack the window, over the request socket `nl`; wait for the acks
        (by sequence number: a late ack of an earlier batch is ignored)."""
        pending = set()
        for route in routes:
            if needs_window(route, self.initcwnd):
                self._seq += 1
                nl.send(replace_request(route, self.initcwnd, self._seq))
                pending.add(self._seq)
        while pending:
            if not select.select([nl], [], [], 2.0)[0]:
                raise NetError("rtnetlink did not acknowledge a route replace")
            answered, _ = acks(nl.recv(1 << 16))
            for seq, errno in answered.items():
                if seq in pending:
                    pending.discard(seq)
                    if errno == 0:
                        self.widened += 1
                    elif errno not in (_ESRCH, _ENOENT):  # gone again: nothing to widen
                        raise NetError(f"route replace refused: {os.strerror(errno)}")

    def _table(self, nl: socket.socket) -> list:
        """The IPv4 routes of every table now (a dump; `needs_window` keeps table 220's)."""
        routes = []
        self._seq += 1
        seq = self._seq
        nl.send(dump_request(seq))
        while True:
            if not select.select([nl], [], [], 2.0)[0]:
                raise NetError("rtnetlink did not finish the route dump")
            data = nl.recv(1 << 20)
            routes += route_messages(data)
            answered, done = acks(data)
            if answered.get(seq):
                raise NetError(f"route dump refused: {os.strerror(answered[seq])}")
            if done:
                return routes

    def _follow(self, subscribed: list, ready: threading.Event) -> None:
        events = requests = None
        try:
            events = _netlink_socket(self.netns, RTMGRP_IPV4_ROUTE)
            requests = _netlink_socket(self.netns)  # replaces and dumps, and their answers
            self._widen(requests, self._table(requests))  # after subscribing: none missed
        except (OSError, NetError) as exc:
            for sock in (events, requests):
                if sock is not None:
                    sock.close()
            subscribed.append(exc)
            ready.set()
            return
        with events, requests:
            subscribed.append(None)
            ready.set()
            while not self._stop.is_set():
                readable, _, _ = select.select([events, self._wake[0]], [], [])
                if events in readable and not self._stop.is_set():
                    try:
                        data = events.recv(1 << 16)
                    except OSError:  # ENOBUFS: events were lost; look at the table itself
                        data = None
                    try:
                        routes = route_messages(data) if data is not None else self._table(requests)
                        self._widen(requests, routes)
                    except (OSError, NetError):
                        pass  # only speed depends on it; the next route event tries again


def route_messages(data: bytes) -> list:
    """Pure: the RTM_NEWROUTE messages in one netlink datagram, decoded by pyroute2."""
    out = []
    for kind, _seq, raw in _messages(data):
        if kind == RTM_NEWROUTE:
            msg = rtmsg(raw)
            msg.decode()
            msg["event"] = "RTM_NEWROUTE"
            out.append(msg)
    return out


def _netlink_socket(netns: str | None, groups: int = 0) -> socket.socket:
    """An rtnetlink socket in `netns`, subscribed to `groups` (created on a short-lived thread that
    enters the namespace: setns moves only the calling thread)."""
    def make() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        s.bind((0, groups))
        return s

    if netns is None:
        return make()
    result: list = []

    def in_netns() -> None:
        try:
            with open(f"/run/netns/{netns}", "rb") as f:
                if _libc.setns(f.fileno(), _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            result.append(make())
        except OSError as exc:
            result.append(exc)

    t = threading.Thread(target=in_netns)
    t.start()
    t.join()
    if isinstance(result[0], OSError):
        raise result[0]
    return result[0]
