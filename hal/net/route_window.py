"""A larger initial congestion window on the tunnel's routes (strongSwan's table 220).

A desk PC's CUPS builds the MFP's queue from one Get-Printer-Attributes answer of ~9 kB that the
session cupsd writes in small pieces; with `Expect: 100-continue` that is 11 TCP segments, one more
than Linux's initial window of 10, so the last one waits a whole WAN round trip for an ACK. The
routes are charon's, installed the moment the CHILD_SA is, and a desk connects a few milliseconds
later (its gateway saw the tunnel half a round trip earlier): too soon to set the window after
`initiate` returns, and a connection keeps the route's window it was accepted with. So a watcher
follows route changes over rtnetlink and re-installs each table-220 route with `initcwnd` as soon
as charon adds it. Only the window changes: destination, device, source, protocol, scope stay.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import struct
import threading

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWROUTE, RTMGRP_IPV4_ROUTE
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from hal.net import NetError
from hal.net.addresses import IPSEC_TABLE, _ipr, _route_key

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


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
    """Pure: the `route replace` arguments that keep everything of `route` but the window."""
    args = {**_route_key(route), "tos": route["tos"], "proto": route["proto"], "scope": route["scope"],
            "type": route["type"], "metrics": {"initcwnd": initcwnd}}
    for attr, key in (("RTA_PREFSRC", "prefsrc"), ("RTA_GATEWAY", "gateway"), ("RTA_PRIORITY", "priority")):
        if route.get(attr) is not None:
            args[key] = route.get(attr)
    return args


class RouteWindow:
    """Keeps `initcwnd` on every table-220 IPv4 route while started (its own thread)."""

    def __init__(self, initcwnd: int = 32, netns: str | None = None):
        if not 1 <= initcwnd <= 256:
            raise ValueError("initcwnd must be between 1 and 256 segments")
        self.initcwnd = initcwnd
        self.netns = netns
        self.widened = 0  # routes re-installed so far
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None  # a pipe that cuts the follower's wait short on stop

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

    def _widen(self, ipr: IPRoute, routes) -> None:
        for route in routes:
            if needs_window(route, self.initcwnd):
                try:
                    ipr.route("replace", **widened(route, self.initcwnd))
                    self.widened += 1
                except NetlinkError:
                    pass  # gone again (charon deleted it): nothing to widen

    def _follow(self, subscribed: list, ready: threading.Event) -> None:
        # A plain netlink socket for the events (pyroute2's reader buffers datagrams where select
        # cannot see them); pyroute2 for the replace.
        try:
            events, ipr = _route_events(self.netns), _ipr(self.netns)
        except (OSError, NetError) as exc:
            subscribed.append(exc)
            ready.set()
            return
        with events, ipr:
            try:
                self._widen(ipr, ipr.get_routes(table=IPSEC_TABLE, family=2))  # after subscribing: none missed
            except (OSError, NetlinkError) as exc:
                subscribed.append(exc)
                ready.set()
                return
            subscribed.append(None)
            ready.set()
            while not self._stop.is_set():
                readable, _, _ = select.select([events, self._wake[0]], [], [])
                if events in readable and not self._stop.is_set():
                    try:
                        data = events.recv(1 << 16)
                    except OSError:  # ENOBUFS: events were lost; look at the table itself
                        self._widen(ipr, ipr.get_routes(table=IPSEC_TABLE, family=2))
                        continue
                    self._widen(ipr, route_messages(data))


def route_messages(data: bytes) -> list:
    """Pure: the RTM_NEWROUTE messages in one netlink datagram, decoded by pyroute2."""
    out, i = [], 0
    while i + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, i)
        if length < 16 or i + length > len(data):
            break
        if kind == RTM_NEWROUTE:
            msg = rtmsg(data[i:i + length])
            msg.decode()
            msg["event"] = "RTM_NEWROUTE"
            out.append(msg)
        i += (length + 3) & ~3
    return out


def _route_events(netns: str | None) -> socket.socket:
    """A netlink socket subscribed to IPv4 route changes, in `netns` (created on a short-lived
    thread that enters the namespace: setns moves only the calling thread)."""
    def make() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        s.bind((0, RTMGRP_IPV4_ROUTE))
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
