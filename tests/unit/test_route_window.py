"""hal/net/route_window: which route messages get the window, and what the replacement keeps."""

from __future__ import annotations

import struct

from pyroute2.netlink.rtnl import RTM_NEWROUTE
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from hal.net.route_window import needs_window, route_messages, widened

CHARON_ROUTE = {"event": "RTM_NEWROUTE", "family": 2, "RTA_TABLE": 220, "RTA_DST": "10.20.0.0", "dst_len": 24,
                "RTA_OIF": 7, "RTA_PREFSRC": "10.20.0.200", "proto": 4, "scope": 253, "type": 1, "tos": 0}


def test_only_table_220_ipv4_routes_without_the_window():
    assert needs_window(CHARON_ROUTE, 32)
    assert not needs_window(dict(CHARON_ROUTE, RTA_TABLE=254), 32)  # main table
    assert not needs_window(dict(CHARON_ROUTE, family=10), 32)  # IPv6
    assert not needs_window(dict(CHARON_ROUTE, event="RTM_DELROUTE"), 32)
    assert not needs_window(dict(CHARON_ROUTE, RTA_METRICS={"RTAX_INITCWND": 32}), 32)  # ours already
    assert needs_window(dict(CHARON_ROUTE, RTA_METRICS={"RTAX_INITCWND": 10}), 32)


def test_replacement_keeps_the_route_and_sets_the_window():
    args = widened(CHARON_ROUTE, 32)
    assert args == {"table": 220, "dst": "10.20.0.0", "dst_len": 24, "family": 2, "tos": 0, "proto": 4,
                    "scope": 253, "type": 1, "oif": 7, "prefsrc": "10.20.0.200", "metrics": {"initcwnd": 32}}


def _encoded(dst: str, table: int) -> bytes:
    m = rtmsg()
    m["header"]["type"] = RTM_NEWROUTE
    m["family"], m["dst_len"], m["table"], m["proto"], m["scope"], m["type"] = 2, 24, table, 4, 253, 1
    m["attrs"] = [("RTA_TABLE", table), ("RTA_DST", dst), ("RTA_OIF", 3)]
    m.encode()
    return bytes(m.data[:m["header"]["length"]])


def test_route_messages_splits_a_datagram():
    data = _encoded("10.20.0.0", 220) + _encoded("10.30.0.0", 254)
    msgs = route_messages(data)
    assert [(m.get("RTA_DST"), m.get("RTA_TABLE"), m["event"]) for m in msgs] == [
        ("10.20.0.0", 220, "RTM_NEWROUTE"), ("10.30.0.0", 254, "RTM_NEWROUTE")]
    assert route_messages(data[:20]) == []  # a message cut short is not read
    assert route_messages(struct.pack("=IHHII", 16, 3, 0, 0, 0)) == []  # NLMSG_DONE
