"""The lab's network: hosts, links, addresses and routes, as data.

    office LAN 10.77.0.0/24 (bridge br-lan on inet)      WAN 10.78.0.0/24 (bridge br-wan on inet)
      office  10.77.0.10  the MFP                          cloud      10.78.0.2   org directory
      cowork  10.77.0.20  another tenant's laptop          gw-acme    10.78.0.11  acme's VPN gateway
      inet    10.77.0.1 / 10.78.0.1  router                gw-globex  10.78.0.12  globex's VPN gateway

    each org's LAN 10.20.0.0/24 (the same range for every org: only the session tells them apart)
      gw-<org> eth1 10.20.0.1    lan-<org> eth0 10.20.0.50 (auth server, desk PC)

    a lab with an extra org (`lab up --extra-orgs 1`) has gw-umbrella 10.78.0.14 and lan-umbrella too

    with the MFP as a virtual machine (`lab up --mfp vm`) the guest is 10.77.0.10; `office` keeps the
    hardware stand-ins (print engine, virtual card) at 10.77.0.9 on a bridge br-mfp that joins its
    eth0 (the office LAN) and the guest's tap device (lab/services/mfp_vm.py)

Every address lives inside a namespace the lab created; nothing is routed to the outside.
"""

from __future__ import annotations

from dataclasses import dataclass

ORGS = ("acme", "globex")

OFFICE_LAN = "10.77.0.0/24"
WAN = "10.78.0.0/24"
ORG_LAN = "10.20.0.0/24"
MFP_ADDRESS = "10.77.0.10"     # the MFP on the office LAN: the office host, or the guest on it
STAND_INS_ADDRESS = "10.77.0.9"  # `office` when the MFP is a guest: the engine and the card's far end
MFP_BRIDGE = "br-mfp"


@dataclass(frozen=True)
class Iface:
    host: str
    name: str
    cidr: str | None = None  # address/prefix, or None for a bridge port
    bridge: str | None = None  # enslave to this bridge (on the same host)


@dataclass(frozen=True)
class Link:
    a: Iface
    b: Iface


@dataclass(frozen=True)
class Route:
    host: str
    dst: str
    via: str


@dataclass(frozen=True)
class Topology:
    hosts: tuple[str, ...]
    bridges: tuple[Iface, ...]
    links: tuple[Link, ...]
    routes: tuple[Route, ...]
    routers: tuple[str, ...]
    mfp: str = "netns"  # where the MFP runs: the office host itself, or a guest on it ("vm")

    @property
    def mfp_address(self) -> str:
        """The MFP's address on the office LAN (the office host's, or its guest's)."""
        return MFP_ADDRESS

    def address(self, host: str, iface: str = "eth0") -> str:
        """The IPv4 address (no prefix) of `host`'s `iface`."""
        for link in self.links:
            for end in (link.a, link.b):
                if end.host == host and end.name == iface and end.cidr:
                    return end.cidr.split("/")[0]
        for br in self.bridges:
            if br.host == host and br.name == iface and br.cidr:
                return br.cidr.split("/")[0]
        raise KeyError(f"{host}:{iface} has no address")


def build(orgs: tuple[str, ...] = ORGS, mfp: str = "netns") -> Topology:
    """The lab's network with a gateway host and a LAN host for each org of `orgs` (contracted orgs;
    each gateway at its org's WAN address, lab/orgs.py). `mfp="vm"`: office's eth0 is a port of
    its bridge br-mfp (10.77.0.9), where the MFP guest's tap joins the LAN as 10.77.0.10."""
    from lab.orgs import spec

    if mfp not in ("netns", "vm"):
        raise ValueError(f"mfp must be netns or vm, not {mfp!r}")
    hosts = ["inet", "office", "cowork", "cloud"]
    bridges = [Iface("inet", "br-lan", "10.77.0.1/24"), Iface("inet", "br-wan", "10.78.0.1/24")]
    office = Iface("office", "eth0", f"{MFP_ADDRESS}/24")
    if mfp == "vm":
        bridges.append(Iface("office", MFP_BRIDGE, f"{STAND_INS_ADDRESS}/24"))
        office = Iface("office", "eth0", bridge=MFP_BRIDGE)
    links = [
        Link(office, Iface("inet", "v-office", bridge="br-lan")),
        Link(Iface("cowork", "eth0", "10.77.0.20/24"), Iface("inet", "v-cowork", bridge="br-lan")),
        Link(Iface("cloud", "eth0", "10.78.0.2/24"), Iface("inet", "v-cloud", bridge="br-wan")),
    ]
    routes = [Route(h, "default", "10.77.0.1") for h in ("office", "cowork")]
    routes.append(Route("cloud", "default", "10.78.0.1"))
    routers = ["inet"]
    for org in orgs:
        gw, lan = f"gw-{org}", f"lan-{org}"
        hosts += [gw, lan]
        links.append(Link(Iface(gw, "eth0", f"{spec(org).wan_address}/24"), Iface("inet", f"v-{gw}", bridge="br-wan")))
        links.append(Link(Iface(gw, "eth1", "10.20.0.1/24"), Iface(lan, "eth0", "10.20.0.50/24")))
        routes.append(Route(gw, "default", "10.78.0.1"))
        routes.append(Route(lan, "default", "10.20.0.1"))
        routers.append(gw)
    return Topology(tuple(hosts), tuple(bridges), tuple(links), tuple(routes), tuple(routers), mfp)
