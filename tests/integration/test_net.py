"""hal/net against the real kernel in the lab: the nftables table, IPsec leftovers and the tunnel
routes' initial window.

The firewall is exercised with real TCP connections from `cowork` to a listener on office:631.
"""

from __future__ import annotations

import sys
import time

import pytest

from prereq import need_binary

from hal.net import FirewallError
from hal.net.addresses import flush_stale_ipsec, interface_of, ipsec_leftovers
from hal.net.firewall import Firewall
from hal.net.route_window import RouteWindow

LISTENER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 631)); s.listen()
while True:
    c, a = s.accept(); c.sendall(("hello " + a[0] + "\\n").encode()); c.close()
"""

CLIENT = """
import socket, sys
s = socket.socket(); s.settimeout(float(sys.argv[3]))
if sys.argv[2] != "-": s.bind((sys.argv[2], 0))
s.connect((sys.argv[1], 631)); print(s.recv(100).decode().strip())
"""


def ipp_listener(lab, host: str, address: str, key: str):
    lab.spawn(key, host, [sys.executable, "-c", LISTENER, address])
    for _ in range(100):
        if lab.host(host).run(["ss", "-Hltn", f"src {address}:631"]).stdout.strip():
            return
        time.sleep(0.02)
    raise AssertionError(f"listener on {host} {address}:631 did not start")


def ipp_connect(lab, host: str, address: str, source: str = "-", timeout: float = 1.5) -> str | None:
    """The listener's greeting when a TCP connection from `host` to address:631 works, else None."""
    proc = lab.host(host).run([sys.executable, "-c", CLIENT, address, source, str(timeout)], check=False,
                              timeout=timeout + 10)
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


@pytest.fixture(scope="module")
def office_listener(lab):
    need_binary("nft", "ss")
    ipp_listener(lab, "office", "0.0.0.0", "tpn-net-ipp")
    yield
    lab.procs.stop("tpn-net-ipp")


@pytest.mark.parametrize("backend", ["libipsec", "kernel"])
def test_firewall_install_verify_remove(lab, office_listener, backend):
    fw = Firewall(backend, netns=lab.host("office").ns)
    assert ipp_connect(lab, "cowork", "10.77.0.10") == "hello 10.77.0.20"  # baseline: open

    fw.install()
    fw.install()  # idempotent: replaced atomically, still exactly one table
    assert fw.installed()
    fw.verify()
    before = fw.counters()
    assert ipp_connect(lab, "cowork", "10.77.0.10") is None
    after = fw.counters()
    assert after["ipp-otherwise"] > before["ipp-otherwise"]
    assert after["ipp-via-ipsec"] == before["ipp-via-ipsec"] == 0
    # The firmware's own connections (lo) still reach the port.
    assert ipp_connect(lab, "office", "127.0.0.1") == "hello 127.0.0.1"

    fw.remove()
    fw.remove()  # idempotent
    assert not fw.installed()
    with pytest.raises(FirewallError):
        fw.verify()
    assert ipp_connect(lab, "cowork", "10.77.0.10") == "hello 10.77.0.20"


def test_firewall_verify_detects_tampering(lab):
    fw = Firewall("libipsec", netns=lab.host("office").ns)
    fw.install()
    try:
        lab.host("office").run(["nft", "insert", "rule", "inet", "tenantprint", "input", "tcp", "dport", "631", "accept"])
        with pytest.raises(FirewallError, match="differs"):
            fw.verify()
        fw.install()  # reinstalling restores exactly our ruleset
        fw.verify()
    finally:
        fw.remove()


def test_firewall_rejects_bad_input():
    with pytest.raises(FirewallError):
        Firewall("xfrm")
    with pytest.raises(FirewallError):
        Firewall("libipsec", tun='ipsec0" accept')


def test_flush_stale_ipsec_removes_leftovers(lab):
    h = lab.host("cowork")  # no charon runs there
    h.run(["ip", "tuntap", "add", "dev", "ipsec0", "mode", "tun"])
    h.run(["ip", "link", "set", "ipsec0", "up"])
    h.run(["ip", "addr", "add", "10.20.0.201/32", "dev", "ipsec0"])
    h.run(["ip", "route", "add", "10.20.0.0/24", "dev", "ipsec0", "table", "220"])
    h.run(["ip", "rule", "add", "lookup", "220", "priority", "220"])
    h.run(["ip", "rule", "add", "lookup", "220", "priority", "221"])
    assert interface_of("10.20.0.201", netns=h.ns) == "ipsec0"
    left = ipsec_leftovers(netns=h.ns)
    assert left["tun"] and left["routes"] and len(left["rules"]) == 2

    after = flush_stale_ipsec(netns=h.ns)

    assert after == {"xfrm_states": 0, "xfrm_policies": 0, "routes": [], "rules": [], "tun": False}
    assert interface_of("10.20.0.201", netns=h.ns) is None
    assert "lookup 220" not in h.run(["ip", "rule"]).stdout.decode()
    # The host's own network is untouched.
    assert interface_of("10.77.0.20", netns=h.ns) == "eth0"
    assert flush_stale_ipsec(netns=h.ns) == after  # idempotent


def _table_220(h) -> dict[str, str]:
    out = {}
    for line in h.run(["ip", "route", "show", "table", "220"]).stdout.decode().splitlines():
        out[line.split()[0]] = line
    return out


def test_route_window_widens_tunnel_routes_as_charon_adds_them(lab):
    h = lab.host("cowork")  # no charon runs there
    h.run(["ip", "tuntap", "add", "dev", "ipsec0", "mode", "tun"])
    h.run(["ip", "link", "set", "ipsec0", "up"])
    h.run(["ip", "addr", "add", "10.20.0.201/32", "dev", "ipsec0"])
    try:
        # one route there before, one added while it runs (as charon does), one in the main table
        h.run(["ip", "route", "add", "10.20.0.0/24", "dev", "ipsec0", "proto", "static", "src", "10.20.0.201",
               "table", "220"])
        window = RouteWindow(32, netns=h.ns)
        window.start()
        try:
            assert "initcwnd 32" in _table_220(h)["10.20.0.0/24"]
            h.run(["ip", "route", "add", "10.30.0.0/24", "dev", "ipsec0", "proto", "static", "src", "10.20.0.201",
                   "table", "220"])
            h.run(["ip", "route", "add", "10.40.0.0/24", "dev", "ipsec0"])
            deadline = time.monotonic() + 2
            while "initcwnd" not in _table_220(h)["10.30.0.0/24"] and time.monotonic() < deadline:
                time.sleep(0.005)
            route = _table_220(h)["10.30.0.0/24"]
            # only the window changed
            assert "initcwnd 32" in route and "src 10.20.0.201" in route and "proto static" in route, route
            assert "initcwnd" not in h.run(["ip", "route", "show", "10.40.0.0/24"]).stdout.decode()
        finally:
            window.stop()
        h.run(["ip", "route", "add", "10.50.0.0/24", "dev", "ipsec0", "table", "220"])
        time.sleep(0.2)
        assert "initcwnd" not in _table_220(h)["10.50.0.0/24"]  # stopped: routes are left as they come
    finally:
        flush_stale_ipsec(netns=h.ns)
        h.run(["ip", "route", "del", "10.40.0.0/24"], check=False)


def test_route_window_refuses_a_silly_window():
    with pytest.raises(ValueError):
        RouteWindow(0)
