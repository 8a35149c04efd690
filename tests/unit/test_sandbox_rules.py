"""hal/sandbox, the pure parts: link addresses, names, gateways, the door's nftables text, the scripts."""

from __future__ import annotations

import ipaddress
import subprocess

import pytest

from hal.net.firewall import DOOR_MARK
from hal.sandbox import (ForwardingError, SandboxUnavailable, SandboxConfigError, SandboxSetupError, check_gateway, check_name,
                         link_for, veth_name)
from hal.sandbox.forwarding import add_elements, delete_elements, door_element, parse_listing, ruleset
from hal.sandbox.mounts import SANDBOX_MOUNTS, foreign_mounts
from hal.sandbox.namespaces import _DEVICE_SIDE, _SANDBOX_SIDE, Sandbox, sandbox_batch

# `nft list table inet tenantprint_sandboxes` as nft 1.0.6 printed it with three sandboxes and two doors
LISTED = """table inet tenantprint_sandboxes {
\tset links {
\t\ttype ifname
\t\telements = { "tpv1",
\t\t\t     "tpv2",
\t\t\t     "tpv5" }
\t}

\tset doors {
\t\ttype ifname . ipv4_addr . ipv4_addr . ifname
\t\telements = { "tpv1" . 100.64.200.6 . 198.51.100.1 . "up0",
\t\t\t     "tpv2" . 100.64.200.10 . 198.51.100.3 . "up0" }
\t}

\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname @links counter packets 3 bytes 180 drop comment "drop-sandbox-to-device"
\t}

\tchain forward {
\t\ttype filter hook forward priority -20; policy drop;
\t\tct state invalid counter packets 0 bytes 0 drop comment "drop-invalid"
\t\tudp dport { 500, 4500 } iifname . ip saddr . ip daddr . oifname @doors meta mark set 0x74700001 accept comment "ike-out"
\t\tmeta l4proto esp iifname . ip saddr . ip daddr . oifname @doors meta mark set 0x74700001 accept comment "esp-out"
\t\tct state established,related ct direction reply oifname . ct original ip saddr . ct original ip daddr . iifname @doors meta mark set 0x74700001 accept comment "replies"
\t\tcounter packets 12 bytes 900 drop comment "drop-forward"
\t}

\tchain output {
\t\ttype filter hook output priority filter; policy accept;
\t\toifname @links counter packets 1 bytes 60 drop comment "drop-device-to-sandbox"
\t}

\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tiifname . ip saddr . ip daddr . oifname @doors masquerade
\t}
}
"""


# -- links --------------------------------------------------------------------------------------

def test_each_index_gets_its_own_30():
    first = link_for("100.64.200.0/24", 0)
    assert (str(first.network), str(first.device_ip), str(first.sandbox_ip), first.prefixlen) == (
        "100.64.200.0/30", "100.64.200.1", "100.64.200.2", 30)
    last = link_for("100.64.200.0/24", 63)
    assert (str(last.network), str(last.device_ip), str(last.sandbox_ip)) == (
        "100.64.200.252/30", "100.64.200.253", "100.64.200.254")
    links = [link_for("100.64.200.0/24", i).network for i in range(64)]
    assert all(not x.overlaps(y) for i, x in enumerate(links) for y in links[i + 1:])
    assert link_for(ipaddress.IPv4Network("10.0.0.0/30"), 0).sandbox_ip == ipaddress.IPv4Address("10.0.0.2")


@pytest.mark.parametrize("net, index", [
    ("100.64.200.0/24", 64), ("100.64.200.0/24", -1), ("100.64.200.0/24", True), ("100.64.200.0/24", "1"),
    ("100.64.200.0/30", 1), ("100.64.200.0/31", 0), ("100.64.200.1/24", 0), ("fd00::/64", 0), ("nonsense", 0),
])
def test_impossible_links_are_refused(net, index):
    with pytest.raises(SandboxConfigError):
        link_for(net, index)


# -- names and gateways ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tps-3", "tpsbx-a", "a", "a" * 15])
def test_names_that_can_name_a_sandbox(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "3tps", "Tps-3", "a" * 16, "a/b", "a b", "../x", "tps_3", None, "-a"])
def test_names_that_cannot(name):
    with pytest.raises(SandboxConfigError):
        check_name(name)


def test_the_device_side_of_the_link_is_named_by_index():
    assert veth_name(3) == "tpv3" and len(veth_name(16383)) <= 15


def test_a_gateway_is_an_ipv4_unicast_address_outside_the_links():
    assert check_gateway("198.51.100.1") == ipaddress.IPv4Address("198.51.100.1")
    for bad in ("2001:db8::1", "::1", "0.0.0.0", "127.0.0.1", "224.0.0.1", "169.254.1.1", "255.255.255.255",
                "100.64.200.9", "gw.example.org", ""):
        with pytest.raises(SandboxConfigError):
            check_gateway(bad)
    assert check_gateway("100.64.200.9", "100.64.201.0/24")  # another link network: fine


# -- the door's table ------------------------------------------------------------------------------

def test_the_listing_compares_equal_to_the_ruleset_whatever_the_elements_and_counters():
    lines, elements = parse_listing(LISTED)
    assert lines == parse_listing(ruleset())[0]
    assert elements == {"links": {"tpv1", "tpv2", "tpv5"},
                        "doors": {("tpv1", "100.64.200.6", "198.51.100.1", "up0"),
                                  ("tpv2", "100.64.200.10", "198.51.100.3", "up0")}}
    assert parse_listing(ruleset())[1] == {"links": set(), "doors": set()}
    changed = LISTED.replace('policy drop;', 'policy accept;')
    assert parse_listing(changed)[0] != lines


def test_the_ruleset_forwards_only_through_a_door():
    text = ruleset()
    forward = text[text.index("chain forward"):text.index("chain output")]
    assert "policy drop;" in forward
    # it runs before the device firewall's forward chain (filter - 10), which forwards what it marked
    assert "hook forward priority -20;" in forward
    assert all(f"meta mark set {DOOR_MARK:#x} accept" in line for line in forward.splitlines() if "accept" in line)
    accepts = [line for line in forward.splitlines() if line.strip().endswith(('accept comment "ike-out"',
                                                                                'accept comment "esp-out"',
                                                                                'accept comment "replies"'))]
    assert len(accepts) == 3 and all("@doors" in line for line in accepts)
    assert sum("accept" in line for line in forward.splitlines()) == 3
    # the reply rule follows the flow's original tuple, so closing the door stops established flows
    assert "ct direction reply oifname . ct original ip saddr . ct original ip daddr . iifname @doors" in forward
    assert 'iifname @links counter drop comment "drop-sandbox-to-device"' in text
    assert 'oifname @links counter drop comment "drop-device-to-sandbox"' in text
    nat = text[text.index("chain postrouting"):]
    assert [line.strip() for line in nat.splitlines() if "masquerade" in line] == [
        "iifname . ip saddr . ip daddr . oifname @doors masquerade"]


def test_elements_are_spelled_as_nft_lists_them_and_deleted_idempotently():
    door = ("tpv1", "100.64.200.6", "198.51.100.1", "up0")
    assert door_element(door) == '"tpv1" . 100.64.200.6 . 198.51.100.1 . "up0"'
    assert add_elements(["tpv1"], [door]) == (
        'add element inet tenantprint_sandboxes links { "tpv1" }\n'
        'add element inet tenantprint_sandboxes doors { "tpv1" . 100.64.200.6 . 198.51.100.1 . "up0" }\n')
    deleting = delete_elements(["tpv1"], [door]).splitlines()
    assert deleting[:2] == add_elements(["tpv1"], [door]).splitlines()  # absent or not, the delete works
    assert deleting[2:] == ['delete element inet tenantprint_sandboxes links { "tpv1" }',
                            'delete element inet tenantprint_sandboxes doors { "tpv1" . 100.64.200.6 . '
                            '198.51.100.1 . "up0" }']
    for bad in (("tpv1; flush ruleset", "100.64.200.6", "198.51.100.1", "up0"),
                ("tpv1", "100.64.200.6", "198.51.100.1", 'up0" }'), ("tpv1", "x", "198.51.100.1", "up0")):
        with pytest.raises(ForwardingError):
            door_element(bad)


# -- the sandbox's plan -------------------------------------------------------------------------------

def test_a_sandbox_object_plans_its_paths_link_and_commands():
    sb = Sandbox("tps-3", 3, run_root="/run/tenantprint/sandboxes")
    assert (str(sb.run_dir), str(sb.record), str(sb.netns_path), sb.veth) == (
        "/run/tenantprint/sandboxes/tps-3", "/run/tenantprint/sandboxes/tps-3.json", "/run/netns/tps-3", "tpv3")
    assert str(sb.link.network) == "100.64.200.12/30"
    with pytest.raises(SandboxUnavailable):  # not created: no holder keeps its mount namespace
        sb.argv(["charon"])
    assert sandbox_batch(sb.link) == ("link set lo up\naddr add 100.64.200.14/30 dev eth0\nlink set eth0 up\n"
                                      "route add default via 100.64.200.13 dev eth0\n")


@pytest.mark.parametrize("kwargs", [dict(uplink="eth0; reboot"), dict(run_root="relative/dir"),
                                    dict(run_root="/run/with space"),
                                    dict(run_size_mb=0), dict(tmp_size_mb=5000), dict(link_net="10.0.0.0/31")])
def test_a_sandbox_refuses_bad_settings(kwargs):
    with pytest.raises(SandboxConfigError):
        Sandbox("tps-1", 1, **kwargs)


def test_a_setup_error_says_what_the_teardown_left():
    assert str(SandboxSetupError("sandbox x: link: boom")) == "sandbox x: link: boom"
    err = SandboxSetupError("sandbox x: link: boom", ["netns x"])
    assert err.problems == ["netns x"] and str(err).endswith("(teardown left: netns x)")


@pytest.mark.parametrize("script", [_DEVICE_SIDE, _SANDBOX_SIDE, SANDBOX_MOUNTS])
def test_the_scripts_parse(script):
    assert subprocess.run(["sh", "-n", "-c", script], capture_output=True).returncode == 0


# -- what a new sandbox's mount table may hold ---------------------------------------------------

SANDBOX_MOUNTINFO = """\
184 183 254:0 / / rw,relatime - ext4 /dev/vda rw
204 184 0:21 / /proc rw,relatime - proc proc rw
236 184 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,mode=755
239 236 0:24 / /dev/pts rw,relatime - devpts devpts rw,mode=600
252 184 254:0 /var/tmp/lab/mnt /var/tmp/lab/mnt rw,relatime - ext4 /dev/vda rw
254 184 0:47 / /run rw,nosuid,nodev,noexec,relatime - tmpfs tenantprint-sandbox rw,size=65536k,mode=711
237 236 0:48 / /dev/shm rw,nosuid,nodev,relatime - tmpfs tmpfs rw,size=16384k
238 184 0:49 / /tmp rw,nosuid,nodev,relatime - tmpfs tmpfs rw,size=65536k
205 184 0:50 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
"""


def test_a_clean_sandbox_mount_table_has_nothing_foreign():
    assert foreign_mounts(SANDBOX_MOUNTINFO, "/run/tenantprint/sandboxes") == []
    kept = SANDBOX_MOUNTINFO + "260 238 254:0 /tmp/ci/repo /tmp/ci/repo rw - ext4 /dev/vda rw\n"
    assert foreign_mounts(kept, "/run/tenantprint/sandboxes", ["/tmp/ci/repo"]) == []


@pytest.mark.parametrize("line, found", [
    ("300 254 0:4 net:[4026532177] /run/netns/tps-4 rw - nsfs nsfs rw", "/run/netns/tps-4 (a namespace handle)"),
    ("301 184 0:4 net:[4026532177] /srv/handle rw - nsfs nsfs rw", "/srv/handle (a namespace handle)"),
    ("302 254 0:51 / /run/tenantprint/sandboxes/tps-2 rw - tmpfs tenantprint-sandbox rw",
     "/run/tenantprint/sandboxes/tps-2"),
    ("303 184 0:52 / /var/sbx/tps-2 rw - tmpfs tenantprint-sandbox rw", "/var/sbx/tps-2"),
    ("304 254 0:53 / /run rw - tmpfs tmpfs rw", "/run"),  # a second /run: stacked, one is not ours
    ("305 238 0:54 / /tmp/x\\040y rw - tmpfs tmpfs rw", "/tmp/x y"),
])
def test_anything_inherited_below_the_cleared_trees_or_any_handle_is_foreign(line, found):
    assert foreign_mounts(SANDBOX_MOUNTINFO + line + "\n", "/var/sbx") == [found]
