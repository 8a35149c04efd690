"""hal/tunnel against real charons: the MFP's on `office`, the org gateways' on `gw-acme`/`gw-globex`.

Each scenario ends with the cleanup invariants: charon's inventory empty, no IPsec state left on
office, no canary (org secret) in any argv, in swanctl's listings or in a file outside the lab's
data dir.
"""

from __future__ import annotations

import ipaddress
import os
import queue
import threading
import time
from pathlib import Path

import pytest

from prereq import need_binary

from hal.directory.profile import SessionProfile
from hal.net.addresses import ipsec_leftovers
from hal.net.firewall import Firewall
from hal.tunnel import TunnelConfig, TunnelDown, TunnelSetupFailed, open_tunnel
from lab.orgs import CANARY_MARK, canaries, lab_profile
from lab.services.charon import GatewayService, MfpCharonService
from lab.topology import ORG_LAN

from test_net import ipp_connect, ipp_listener

DOWN_BOUND_S = 6.0  # dpd_delay 1 s + retransmits 0.5 * (1 + 1.4 + 1.96 + 2.74) ~= 4.5 s, plus slack


@pytest.fixture(scope="module")
def charons(lab):
    need_binary("/usr/lib/ipsec/charon", "/usr/sbin/swanctl", "nft")
    mfp = MfpCharonService()
    gws = {org: GatewayService(org, backend=mfp.backend()) for org in ("acme", "globex")}
    mfp.start(lab)
    for gw in gws.values():
        gw.start(lab)
    yield mfp, gws
    for svc in (*gws.values(), mfp):
        svc.stop(lab)


@pytest.fixture
def tunnel(lab, charons):
    mfp, _ = charons
    tun = open_tunnel(TunnelConfig(backend=mfp.backend(), vici_socket=str(mfp.vici_socket(lab)),
                                   netns=lab.host("office").ns))
    yield tun
    tun.purge()
    assert_clean(lab, tun)


def profile(lab, org: str, **vpn) -> SessionProfile:
    wire = lab_profile(lab, org)
    wire["vpn"].update(vpn)
    return SessionProfile.from_wire(wire)


def swanctl_listings(lab) -> str:
    out = []
    for what in ("--list-sas", "--list-conns", "--list-certs", "--list-pols", "--list-pools"):
        proc = lab.host("office").run(["swanctl", what, "--uri", "unix:///run/charon.vici"], check=False)
        out.append(proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace"))
    return "\n".join(out)


def cmdlines_with(needles: list[str]) -> list[int]:
    hits = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if any(n in cmd for n in needles):
                hits.append(int(proc.name))
    return hits


def files_with(roots: list[Path], needles: list[str], skip: Path) -> list[str]:
    hits = []
    raw = [n.encode() for n in needles]
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            if Path(dirpath).is_relative_to(skip):
                dirnames[:] = []
                continue
            for f in filenames:
                p = Path(dirpath) / f
                try:
                    if not p.is_file() or p.stat().st_size > 8 << 20:
                        continue
                    data = p.read_bytes()
                except OSError:
                    continue
                if any(n in data for n in raw):
                    hits.append(str(p))
    return hits


def assert_no_canary_leak(lab) -> None:
    secrets = canaries(lab)
    assert all(CANARY_MARK in s for s in secrets)
    assert cmdlines_with(secrets) == []
    data = lab.layout.root / "data"
    assert files_with([lab.layout.root, Path("/tmp"), Path("/dev/shm")], secrets, skip=data) == []
    assert not any(s in swanctl_listings(lab) for s in secrets)


def assert_clean(lab, tun) -> None:
    inv = tun.inventory()
    assert inv == {"conns": [], "sas": [], "shared": [], "keys": [], "certs": 0}
    left = ipsec_leftovers(netns=lab.host("office").ns)
    assert left["routes"] == [] and left["xfrm_states"] == 0
    assert "tp-" not in swanctl_listings(lab)
    assert_no_canary_leak(lab)


def test_acme_up_reachable_from_lan_only(lab, tunnel):
    t0 = time.monotonic()
    up = tunnel.up(profile(lab, "acme"), timeout=10)
    elapsed = time.monotonic() - t0
    assert ipaddress.ip_address(up.virtual_ip) in ipaddress.ip_network(ORG_LAN)
    assert up.interface == ("ipsec0" if tunnel.backend == "libipsec" else "eth0")
    assert up.remote_ts == (ORG_LAN,)
    assert elapsed < 3, f"up took {elapsed:.2f}s"
    inv = tunnel.inventory()
    assert inv["conns"] == ["tp-acme"] and inv["sas"] == ["tp-acme"] and inv["shared"] == ["tp-acme-psk"]

    fw = Firewall(tunnel.backend, netns=lab.host("office").ns)
    ipp_listener(lab, "office", up.virtual_ip, "tpn-tunnel-ipp")
    try:
        # Without the firewall a coworker routing to the virtual IP gets in: what the table stops.
        cowork = lab.host("cowork")
        cowork.run(["ip", "route", "replace", ORG_LAN, "via", "10.77.0.10"])
        assert ipp_connect(lab, "cowork", up.virtual_ip) == "hello 10.77.0.20"

        fw.install()  # the device firewall: IKE/ESP only with the session's gateway
        fw.allow_gateway(profile(lab, "acme").vpn.gateway)
        assert ipp_connect(lab, "lan-acme", up.virtual_ip) == "hello 10.20.0.50"
        assert ipp_connect(lab, "cowork", up.virtual_ip) is None
        cowork.run(["ip", "addr", "add", "10.20.0.99/32", "dev", "eth0"])
        assert ipp_connect(lab, "cowork", up.virtual_ip, source="10.20.0.99") is None
        counts = fw.counters()
        assert counts["ipp-via-ipsec"] >= 1 and counts["drop-ipp"] >= 2
    finally:
        lab.host("cowork").run(["ip", "addr", "del", "10.20.0.99/32", "dev", "eth0"], check=False)
        lab.host("cowork").run(["ip", "route", "del", ORG_LAN], check=False)
        lab.procs.stop("tpn-tunnel-ipp")
        fw.remove()

    tunnel.down()
    tunnel.down()  # idempotent
    tunnel.purge()
    assert_clean(lab, tunnel)


def test_wrong_psk_is_an_auth_failure_and_leaves_nothing(lab, tunnel):
    bad = "TPCANARY-acme-psk-wrong-" + "0" * 16
    with pytest.raises(TunnelSetupFailed) as err:
        tunnel.up(profile(lab, "acme", psk=bad), timeout=8)
    assert err.value.cause == "auth"
    assert bad not in str(err.value)
    assert tunnel.inventory()["shared"] == []


def test_unreachable_gateway(lab, tunnel):
    t0 = time.monotonic()
    with pytest.raises(TunnelSetupFailed) as err:
        tunnel.up(profile(lab, "initech"), timeout=8)
    assert err.value.cause in ("unreachable", "timeout")
    assert time.monotonic() - t0 < 9
    assert tunnel.inventory()["conns"] == []


def test_gateway_killed_gives_tunnel_down_within_bound(lab, charons, tunnel):
    _, gws = charons
    tunnel.up(profile(lab, "acme"), timeout=10)
    events: queue.Queue = queue.Queue()
    stop = threading.Event()

    def follow():
        for ev in tunnel.events(stop):
            events.put((time.monotonic(), ev))

    th = threading.Thread(target=follow, daemon=True)
    th.start()
    time.sleep(0.5)  # registered, and the check for an already-dead SA has run
    assert events.empty()
    t_kill = time.monotonic()
    assert gws["acme"].kill(lab)
    try:
        t_down, ev = events.get(timeout=DOWN_BOUND_S + 10)
    finally:
        stop.set()
    th.join(timeout=2)
    latency = t_down - t_kill
    print(f"gateway SIGKILL -> TunnelDown: {latency:.2f}s")
    assert ev == TunnelDown("peer")
    assert latency <= DOWN_BOUND_S
    tunnel.purge()
    assert_clean(lab, tunnel)
    gws["acme"].start(lab)  # flushes what the killed charon left on gw-acme, starts a fresh one
    assert ipsec_leftovers(netns=lab.host("gw-acme").ns)["rules"] != []  # the new charon's own rule


def test_globex_after_acme_gets_same_range_and_only_its_lan(lab, tunnel):
    up = tunnel.up(profile(lab, "acme"), timeout=10)
    acme_vip = up.virtual_ip
    tunnel.down()
    tunnel.purge()
    assert_clean(lab, tunnel)

    up = tunnel.up(profile(lab, "globex"), timeout=10)
    assert ipaddress.ip_address(up.virtual_ip) in ipaddress.ip_network(ORG_LAN)
    assert tunnel.inventory()["conns"] == ["tp-globex"]
    ipp_listener(lab, "office", up.virtual_ip, "tpn-tunnel-ipp")
    try:
        assert ipp_connect(lab, "lan-globex", up.virtual_ip) == "hello 10.20.0.50"
        if acme_vip == up.virtual_ip:
            # acme's LAN routes the address to acme's gateway, which holds no SA for it any more.
            assert ipp_connect(lab, "lan-acme", up.virtual_ip) is None
    finally:
        lab.procs.stop("tpn-tunnel-ipp")
    tunnel.down()


def test_acme_psk_does_not_open_globex(lab, tunnel):
    acme_psk = lab_profile(lab, "acme")["vpn"]["psk"]
    with pytest.raises(TunnelSetupFailed) as err:
        tunnel.up(profile(lab, "globex", psk=acme_psk), timeout=8)
    assert err.value.cause == "auth"


def test_purge_verifies_and_reports_leftovers(lab, charons, tunnel):
    """A shared secret loaded behind the tunnel's back is found by purge's verification, then removed."""
    import socket

    import vici

    mfp, _ = charons
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(mfp.vici_socket(lab)))
    vici.Session(s).load_shared({"id": "stray", "type": "IKE", "data": b"x" * 24, "owners": ["someone"]})
    s.close()
    assert "stray" in tunnel.inventory()["shared"]
    tunnel.purge()  # purge unloads everything charon holds, not only what it loaded itself
    assert tunnel.inventory()["shared"] == []


def test_up_refuses_while_another_session_is_loaded(lab, tunnel):
    tunnel.up(profile(lab, "acme"), timeout=10)
    with pytest.raises(TunnelSetupFailed) as err:
        tunnel.up(profile(lab, "globex"), timeout=10)
    assert err.value.cause == "config" and "purge first" in str(err.value)
    assert tunnel.inventory()["conns"] == ["tp-acme"]  # the refusal touched nothing
