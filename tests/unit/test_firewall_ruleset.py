"""hal/net's firewall and kernel settings, the pure parts: which chain admits what (device and
sandbox), the door mark both tables share, the boot guard, the sysctl file and its check."""

from __future__ import annotations

import pytest

from hal.net import sysctls
from hal.net.firewall import DOOR_MARK, Firewall, boot_guard
from hal.sandbox import VETH_PREFIX
from hal.sandbox.forwarding import ruleset as sandboxes_ruleset


def chain(text: str, name: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f"\tchain {name} {{")
    return [line.strip() for line in lines[start + 1:lines.index("\t}", start)]]


def test_the_device_forwards_only_door_marked_packets_to_or_from_a_sandbox_link():
    forward = chain(Firewall("libipsec").ruleset(), "forward")
    assert forward[0] == "type filter hook forward priority filter - 10; policy drop;"
    accepts = [r for r in forward if "accept" in r]
    assert accepts == [
        f'meta mark {DOOR_MARK:#x} iifname "{VETH_PREFIX}*" oifname != "{VETH_PREFIX}*" counter accept comment "door-out"',
        f'meta mark {DOOR_MARK:#x} iifname != "{VETH_PREFIX}*" oifname "{VETH_PREFIX}*" counter accept comment "door-back"']
    assert forward[-1] == 'counter drop comment "drop-forward"'


def test_the_sandboxes_table_marks_with_the_same_mark_before_the_device_firewall_looks():
    forward = chain(sandboxes_ruleset(), "forward")
    assert forward[0].startswith("type filter hook forward priority -20;")  # runs before filter - 10
    marked = [r for r in forward if "accept" in r]
    assert len(marked) == 3 and all(f"meta mark set {DOOR_MARK:#x} accept" in r for r in marked)


def test_a_router_s_icmp_errors_leave_only_about_confirmed_flows():
    output = chain(Firewall("kernel").ruleset(), "output")
    errors = "icmp type { destination-unreachable, redirect, time-exceeded, parameter-problem }"
    assert output[-2:] == [f"{errors} ct status confirmed accept", f'{errors} counter drop comment "drop-router-icmp"']


def test_the_sandbox_firewall_has_no_ssh_no_dhcp_and_forwards_nothing():
    text = Firewall.for_sandbox("libipsec", "tps-1", tun="ipsec0").ruleset()
    inbound = chain(text, "input")
    assert [r for r in inbound if "accept" in r] == [
        'iifname "lo" accept comment "loopback"',
        'icmpv6 type { mld-listener-query, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } '
        'ip6 hoplimit 255 accept comment "ipv6-nd"',
        'ct state established,related accept comment "established"',
        'udp dport { 500, 4500 } ip saddr @gateways accept comment "ike"',
        'udp dport { 500, 4500 } ip6 saddr @gateways6 accept comment "ike6"',
        'meta l4proto { tcp, udp } th dport 631 iifname "ipsec0" counter accept comment "ipp-via-ipsec"']
    assert chain(text, "forward")[1:] == ['counter drop comment "drop-forward"']
    fw = Firewall.for_sandbox("kernel", "tps-1")
    assert (fw.netns, fw.management, fw.dhcp, fw.doors) == ("tps-1", (), False, False)
    assert 'meta l4proto esp ip saddr @gateways accept comment "esp"' in fw.ruleset()  # kernel: ESP too


def test_ssh_rules_only_with_management_addresses():
    assert "ssh-management" not in Firewall("kernel").ruleset()
    managed = Firewall("kernel", management=["10.77.0.0/24"]).ruleset()
    assert 'tcp dport 22 ip saddr @management accept comment "ssh-management"' in chain(managed, "input")
    assert "elements = { 10.77.0.0/24 }" in managed
    # the device keeps DHCP; without management, ssh is only dropped
    device = chain(Firewall("kernel").ruleset(), "input")
    assert 'udp sport 67 udp dport 68 accept comment "dhcp"' in device
    assert 'tcp dport 22 counter drop comment "drop-ssh"' in device


def test_the_boot_guard_drops_forwarding_with_the_firewall_s_own_chain():
    guard = boot_guard()
    assert guard.startswith("table inet tenantprint {")
    assert chain(guard, "forward") == chain(Firewall("libipsec").ruleset(), "forward")[:1] + [
        'counter drop comment "drop-forward"']
    assert "chain input" not in guard and "chain output" not in guard


# -- kernel settings ----------------------------------------------------------------------------

def test_the_device_forwards_ipv4_and_has_no_router_habits():
    want = sysctls.REQUIRED
    assert want["net.ipv4.ip_forward"] == "1"
    assert list(want)[0] == "net.ipv4.ip_forward"  # it rewrites settings that follow it
    for family in ("all", "default"):
        assert want[f"net.ipv6.conf.{family}.forwarding"] == "0"
        for key in ("send_redirects", "accept_redirects", "accept_source_route"):
            assert want[f"net.ipv4.conf.{family}.{key}"] == "0"
    text = sysctls.sysctl_d()
    for line in ("net.ipv4.conf.*.rp_filter = 1", "net.ipv4.conf.*.send_redirects = 0",
                 "net.ipv4.conf.*.accept_redirects = 0"):
        assert line in text.splitlines()
    assert text.index("net.ipv4.ip_forward = 1") < text.index("net.ipv4.conf.all.accept_redirects = 0")


@pytest.fixture
def proc_sys(monkeypatch):
    """A /proc/sys/net where every required setting holds, interfaces lo and eth0 included."""
    values = {sysctls._path(k): v for k, v in sysctls.REQUIRED.items()}
    for iface in ("lo", "eth0"):
        for name, (want, _) in sysctls.PER_INTERFACE.items():
            values[f"/proc/sys/net/ipv4/conf/{iface}/{name}"] = want
    monkeypatch.setattr(sysctls, "_read_paths", lambda patterns, netns: dict(values))
    return values


def test_mismatches_name_each_setting_and_interface_that_is_off(proc_sys):
    assert sysctls.mismatches() == []
    proc_sys["/proc/sys/net/ipv4/ip_forward"] = "0"
    proc_sys["/proc/sys/net/ipv4/conf/eth0/send_redirects"] = "1"
    proc_sys["/proc/sys/net/ipv4/conf/lo/accept_redirects"] = "1"
    proc_sys["/proc/sys/net/ipv4/conf/eth0/rp_filter"] = "0"  # below all's: all's 1 wins, fine
    proc_sys["/proc/sys/net/ipv4/conf/all/send_redirects"] = "1"  # reported once, as the required key
    del proc_sys["/proc/sys/net/ipv4/conf/all/accept_source_route"]
    assert sysctls.mismatches() == [
        "net.ipv4.ip_forward=0 (want 1)",
        "net.ipv4.conf.all.send_redirects=1 (want 0)",
        "net.ipv4.conf.all.accept_source_route=missing (want 0)",
        "net.ipv4.conf.eth0.send_redirects=1 (want 0)",
        "net.ipv4.conf.lo.accept_redirects=1 (want 0)",
    ]
