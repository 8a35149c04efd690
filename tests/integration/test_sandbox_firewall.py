"""The device forwards the sandboxes' doors and nothing else; the firewall inside a sandbox admits
IPP through the tunnel only. Real kernel, real nftables, both tables as the firmware installs them.

The test builds its own world, everything named `tpfw`: a "device" network namespace with the
device's kernel settings as shipped (`hal.net.sysctls`: ip_forward=1, no redirects) and its
firewall (`inet tenantprint`); an uplink to a "wan" namespace holding the gateway 198.51.100.1 and
a bystander .9; a second interface to a "lan" namespace, a host of the coworking LAN that routes
the sandboxes' link network, the sandboxes' org range and the wan through the device (the worst
case: a LAN that tries to use the device as its router). Sandboxes `tpfw-a` and `tpfw-b`
(`hal.sandbox.namespaces.Sandbox`, which installs `inet tenantprint_sandboxes`) live in the device.
Probes are sockets the test process makes inside the namespaces, so nothing is sent anywhere but
between them. Everything is removed at the end, and checked gone.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from prereq import need_binary, need_root

from hal.net import sysctls
from hal.net.firewall import Firewall
from hal.sandbox import ForwardingError
from hal.sandbox.forwarding import Forwarding
from hal.sandbox.inside import socket_in_netns, stop_processes
from hal.sandbox.mounts import release_run_root
from hal.sandbox.namespaces import Sandbox

PREFIX = "tpfw"
DEVICE, WAN, LAN, ORG = f"{PREFIX}-dev", f"{PREFIX}-wan", f"{PREFIX}-lan", f"{PREFIX}-org"
BASE = Path(f"/run/{PREFIX}")
RUN_ROOT = BASE / "sandboxes"
UPLINK_IP, GW, BYSTANDER = "198.51.100.2", "198.51.100.1", "198.51.100.9"
DEVICE_LAN_IP, LAN_HOST = "192.168.77.1", "192.168.77.20"
BEHIND = "10.20.0.50"  # an address inside sandbox a (on its lo), as an org's range would be
TUN_IP, DESK = "10.20.0.201", "10.20.0.60"  # the sandbox's virtual IP on "ipsec0", a desk behind it
QUIET_S = 0.3  # how long a dropped packet is waited for
IP_RECVERR = 11


def sh(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


def in_ns(ns: str, *argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    return sh("nsenter", f"--net=/run/netns/{ns}", "--", *argv, check=check, input=input)


def our_netns() -> list[str]:
    return [line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines()
            if line.startswith(f"{PREFIX}-")]


def our_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(BASE))
                or line.split()[4].startswith(f"/run/netns/{PREFIX}-")]


def sweep() -> None:
    """Remove whatever an interrupted earlier run of this test left (its own names only)."""
    for ns in our_netns():
        stop_processes(os.stat(f"/run/netns/{ns}").st_ino, None, timeout=1)
    for mount in sorted((m for m in our_mounts() if m.startswith(str(BASE))), key=len, reverse=True):
        sh("umount", "-l", mount, check=False)
    for ns in our_netns():
        sh("ip", "netns", "del", ns, check=False)
    sh("rm", "-rf", str(BASE))


def build_world() -> None:
    for ns in (DEVICE, WAN, LAN, ORG):
        sh("ip", "netns", "add", ns)
    in_ns(DEVICE, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "wan0", "netns", WAN)
    in_ns(DEVICE, "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", LAN)
    in_ns(DEVICE, "sh", "-ec", f"""
        ip link set lo up; ip link set up0 up; ip addr add {UPLINK_IP}/24 dev up0
        ip link set lan0 up; ip addr add {DEVICE_LAN_IP}/24 dev lan0
        ip route add default via {GW}""")
    sysctls.apply(DEVICE)  # the device's kernel settings as the image ships them
    in_ns(WAN, "sh", "-ec", f"""
        ip link set lo up; ip link set wan0 up; ip addr add {GW}/24 dev wan0
        ip addr add {BYSTANDER}/32 dev wan0
        ip route add 100.64.200.0/24 via {UPLINK_IP}; ip route add 192.168.77.0/24 via {UPLINK_IP}""")
    in_ns(LAN, "sh", "-ec", f"""
        ip link set lo up; ip link set eth0 up; ip addr add {LAN_HOST}/24 dev eth0
        ip route add 100.64.200.0/24 via {DEVICE_LAN_IP}; ip route add 10.20.0.0/24 via {DEVICE_LAN_IP}
        ip route add 198.51.100.0/24 via {DEVICE_LAN_IP}""")
    in_ns(ORG, "ip", "link", "set", "lo", "up")


@pytest.fixture(scope="module")
def world():
    need_root()
    need_binary("ip", "nft", "nsenter", "unshare", "mount")
    sweep()
    sandboxes: list[Sandbox] = []
    try:
        build_world()
        device_fw = Firewall("libipsec", netns=DEVICE)
        device_fw.install()
        for name, index in (("a", 0), ("b", 1)):
            sb = Sandbox(f"{PREFIX}-{name}", index, run_root=RUN_ROOT, device_netns=DEVICE)
            sb.create()
            sandboxes.append(sb)
        a = sandboxes[0]
        sh("ip", "-n", a.name, "addr", "add", f"{BEHIND}/32", "dev", "lo")
        # a veth named as kernel-libipsec's TUN, its far end an org desk: what arrives on it looks
        # like decrypted tunnel traffic
        sh("ip", "-n", a.name, "link", "add", "ipsec0", "type", "veth", "peer", "name", "org0", "netns", ORG)
        sh("ip", "-n", a.name, "addr", "add", f"{TUN_IP}/24", "dev", "ipsec0")
        sh("ip", "-n", a.name, "link", "set", "ipsec0", "up")
        in_ns(ORG, "ip", "addr", "add", f"{DESK}/24", "dev", "org0")
        in_ns(ORG, "ip", "link", "set", "org0", "up")
        yield device_fw, sandboxes
        problems = {sb.name: sb.destroy() for sb in sandboxes}
        left = {sb.name: sb.leftovers() for sb in sandboxes}
        Forwarding(DEVICE).remove()
        device_fw.remove()
        release_run_root(RUN_ROOT)
        for ns in (DEVICE, WAN, LAN, ORG):
            sh("ip", "netns", "del", ns)
        assert problems == {sb.name: [] for sb in sandboxes}
        assert left == {sb.name: [] for sb in sandboxes}
        assert our_netns() == [] and our_mounts() == []
    finally:
        for sb in sandboxes:
            sb.destroy()
        sweep()


# -- probes -----------------------------------------------------------------------------------

def udp_in(netns_path: str, address: str = "0.0.0.0", port: int = 0) -> socket.socket:
    s = socket_in_netns(netns_path, socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, port))
    s.settimeout(QUIET_S)
    return s


def ns(name: str) -> str:
    return f"/run/netns/{name}"


def received(s: socket.socket):
    """(data, source) of the next datagram, or None when none came within QUIET_S."""
    try:
        return s.recvfrom(100)
    except TimeoutError:
        return None


def connects(netns_path: str, address: str, port: int, source: str | None = None) -> bool:
    """Whether a TCP connection from `netns_path` to address:port is made within QUIET_S (a
    listening socket completes it without anyone accepting)."""
    with socket_in_netns(netns_path) as s:
        s.settimeout(QUIET_S)
        if source:
            s.bind((source, 0))
        try:
            s.connect((address, port))
            return True
        except OSError:
            return False


def listening(netns_path: str, port: int, address: str = "0.0.0.0") -> socket.socket:
    s = socket_in_netns(netns_path)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, port))
    s.listen(16)
    return s


def router_answer_to_ttl_1(netns_path: str, address: str) -> int | None:
    """The ICMP type a TTL-1 datagram to `address` draws (11: a router said time exceeded), or None."""
    with udp_in(netns_path) as s:
        s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)
        s.sendto(b"ttl", (address, 33434))
        time.sleep(QUIET_S)
        try:
            _, anc, _, _ = s.recvmsg(1, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except (BlockingIOError, TimeoutError):
            return None
        return struct.unpack("IBBB", anc[0][2][:7])[2]


def door_works(sb: Sandbox, port: int = 500) -> bool:
    """A datagram from the sandbox reaches the gateway (masqueraded to the uplink) and its answer
    comes back in."""
    with udp_in(ns(WAN), GW, port) as gw, udp_in(str(sb.netns_path), port=port) as inside:
        inside.sendto(b"hello", (GW, port))
        got = received(gw)
        if got is None:
            return False
        assert got == (b"hello", (UPLINK_IP, got[1][1]))  # masqueraded to the uplink's address
        gw.sendto(b"reply", got[1])
        return received(inside) == (b"reply", (GW, port))


# -- the tests --------------------------------------------------------------------------------

def test_the_device_runs_with_its_shipped_settings(world):
    assert sysctls.mismatches(DEVICE) == []
    assert in_ns(DEVICE, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    device_fw, _ = world
    assert device_fw.verify() == set()
    Forwarding(DEVICE).verify()


def test_a_sandbox_reaches_its_gateway_s_ike_and_nothing_else(world):
    device_fw, (a, b) = world
    a.allow_gateway(GW)
    try:
        before = device_fw.counters()
        assert door_works(a, 500) and door_works(a, 4500)
        after = device_fw.counters()
        assert after["door-out"] >= before["door-out"] + 2 and after["door-back"] >= before["door-back"] + 2
        with udp_in(ns(WAN), GW, 53) as dns, udp_in(ns(WAN), BYSTANDER, 500) as far, \
                udp_in(ns(LAN), LAN_HOST, 500) as lan, udp_in(ns(WAN), GW, 500) as ike, \
                udp_in(str(a.netns_path)) as sa, udp_in(str(b.netns_path), port=500) as sbb:
            sa.sendto(b"dns", (GW, 53))
            sa.sendto(b"far", (BYSTANDER, 500))
            sa.sendto(b"lan", (LAN_HOST, 500))
            sbb.sendto(b"b has no door", (GW, 500))
            assert (received(dns), received(far), received(lan), received(ike)) == (None, None, None, None)
        with listening(ns(WAN), 80, GW):
            assert not connects(str(a.netns_path), GW, 80)  # TCP to the gateway: dropped
    finally:
        a.forget_gateway()
    assert not door_works(a)  # a closed door


def test_nothing_from_the_lan_reaches_a_sandbox_or_anything_behind_the_device(world):
    device_fw, (a, b) = world
    a.allow_gateway(GW)  # an open door changes none of this
    try:
        # the sandboxes' chain runs first and drops these: it counts them
        before = Forwarding(DEVICE).counters()["drop-forward"]
        with listening(str(a.netns_path), 8080), listening(ns(WAN), 8080, GW), \
                udp_in(str(a.netns_path), port=500) as inside:
            assert connects(str(a.netns_path), BEHIND, 8080)  # (the listener is there)
            lan = ns(LAN)
            assert not connects(lan, str(a.link.sandbox_ip), 8080)  # the sandbox's link address
            assert not connects(lan, BEHIND, 8080)  # an address behind it
            assert not connects(lan, GW, 8080)  # LAN to the uplink's side: the device routes nothing
            assert not connects(ns(WAN), str(a.link.sandbox_ip), 8080)  # nor from the uplink's side
            with udp_in(lan, LAN_HOST, 500) as probe:  # not even to the door's own port
                probe.sendto(b"into the door", (str(a.link.sandbox_ip), 500))
                assert received(inside) is None
        assert Forwarding(DEVICE).counters()["drop-forward"] >= before + 5
        # and the device does not answer as a router would
        router_icmp = device_fw.counters()["drop-router-icmp"]
        assert router_answer_to_ttl_1(ns(LAN), GW) is None
        assert router_answer_to_ttl_1(ns(LAN), BEHIND) is None
        assert device_fw.counters()["drop-router-icmp"] >= router_icmp + 2
    finally:
        a.forget_gateway()


def test_without_the_sandboxes_table_or_with_a_changed_one_nothing_is_forwarded(world):
    device_fw, (a, b) = world
    fw = Forwarding(DEVICE)
    a.allow_gateway(GW)
    try:
        assert door_works(a)
        # a door's rule that no longer marks: the device firewall drops what it still accepts
        handle = next(line.rsplit("# handle ", 1)[1] for line in in_ns(
            DEVICE, "nft", "-a", "list", "chain", "inet", "tenantprint_sandboxes", "forward").stdout.splitlines()
            if '"ike-out"' in line)
        in_ns(DEVICE, "nft", "replace", "rule", "inet", "tenantprint_sandboxes", "forward", "handle", handle,
              "udp", "dport", "{ 500, 4500 }", "iifname", ".", "ip", "saddr", ".", "ip", "daddr", ".", "oifname",
              "@doors", "accept")
        before = device_fw.counters()["drop-forward"]
        assert not door_works(a)
        assert device_fw.counters()["drop-forward"] > before
        with pytest.raises(ForwardingError, match="differs"):
            fw.verify()
        fw.install()  # the firmware's repair: replaced, elements carried over
        assert door_works(a)

        fw.remove()  # no sandboxes table at all
        before = device_fw.counters()["drop-forward"]
        assert not door_works(a) and not door_works(a, 4500)
        with listening(str(a.netns_path), 8081):
            assert not connects(ns(LAN), str(a.link.sandbox_ip), 8081)
            assert not connects(ns(LAN), BEHIND, 8081)
        assert not connects(ns(LAN), GW, 80)
        assert device_fw.counters()["drop-forward"] >= before + 4
    finally:
        fw.install()
        for sb in (a, b):
            fw.add_link(sb.veth)
        a.forget_gateway()
    assert fw.elements() == {"links": {a.veth, b.veth}, "doors": set()}


def test_the_firewall_inside_a_sandbox(world):
    """Firewall.for_sandbox in sandbox a: IPP only through the tunnel interface, nothing else from
    eth0 (its ssh, DHCP and IPP listeners answer the device only while that firewall is absent),
    IKE with its gateway works through the door, IKE elsewhere does not leave."""
    _, (a, b) = world
    fw = Forwarding(DEVICE)
    inside = Firewall.for_sandbox("libipsec", a.name)
    sandbox_ip = str(a.link.sandbox_ip)
    fw.remove_link(a.veth)  # the device's own lock on its links, lifted: only the sandbox's remains
    try:
        with listening(str(a.netns_path), 631), listening(str(a.netns_path), 22), \
                listening(str(a.netns_path), 8631), udp_in(str(a.netns_path), port=68) as dhcp:
            assert connects(ns(DEVICE), sandbox_ip, 631)  # the control: reachable without it
            inside.install()
            before = inside.counters()
            assert not connects(ns(DEVICE), sandbox_ip, 631)
            assert not connects(ns(DEVICE), sandbox_ip, 22)  # no management: no ssh from anywhere
            assert not connects(ns(DEVICE), sandbox_ip, 8631)
            with udp_in(ns(DEVICE), port=67) as server:
                server.sendto(b"offer", (sandbox_ip, 68))
                assert received(dhcp) is None
            after = inside.counters()
            assert after["drop-ipp"] > before["drop-ipp"] and after["drop-ssh"] > before["drop-ssh"]
            assert after["drop-other"] >= before["drop-other"] + 2
            # through the tunnel interface, IPP and only IPP
            assert connects(ns(ORG), TUN_IP, 631, source=DESK)
            assert not connects(ns(ORG), TUN_IP, 8631, source=DESK)
            assert inside.counters()["ipp-via-ipsec"] >= 1
        fw.add_link(a.veth)
        # IKE: only to the gateway in its set (the device's door also needs to be open)
        a.allow_gateway(GW)
        with udp_in(str(a.netns_path)) as s:
            with pytest.raises(PermissionError):
                s.sendto(b"ike", (GW, 500))  # its own set is still empty
        inside.allow_gateway(GW)
        assert door_works(a, 500) and door_works(a, 4500)  # the answers come in by eth0, from GW
        with udp_in(str(a.netns_path)) as s:
            with pytest.raises(PermissionError):
                s.sendto(b"ike", (BYSTANDER, 500))
        inside.verify()
    finally:
        fw.add_link(a.veth)
        a.forget_gateway()
        inside.remove()
