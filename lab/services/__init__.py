"""Daemons the lab runs on its hosts, in start order.

A service is an object with `name`, `start(lab)`, `stop(lab)` and `status(lab) -> dict`. `start`
is idempotent (a running service is left alone); processes go through `lab.procs` so that they are
stopped by PID only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lab.lab import Lab
    from lab.options import LabOptions


class Service(Protocol):
    name: str

    def start(self, lab: "Lab") -> None: ...

    def stop(self, lab: "Lab") -> None: ...

    def status(self, lab: "Lab") -> dict: ...


class CloudSeed:
    """Not a process: fills the cloud with the lab's space, organizations, profiles and contracts."""

    name = "cloud-seed"

    def __init__(self, combined: bool, ldap: tuple[str, ...] = (), extra_orgs: int = 0, trust: str = "psk"):
        self.trust = trust
        self.combined = combined
        self.ldap = ldap
        self.extra_orgs = extra_orgs

    def start(self, lab: "Lab") -> None:
        from lab import orgs
        from lab.services import cloud

        profiles = {}
        for org in orgs.lab_orgs(self.extra_orgs):
            wire = orgs.lab_profile(lab, org, auth_kind="ldap" if org in self.ldap else "radius", trust=self.trust)
            if org == "acme" and self.combined:
                wire["policy"]["combined_mode"] = True
            profiles[org] = wire
        cloud.seed(lab, orgs=profiles, contracts=list(orgs.contracted(self.extra_orgs)))

    def stop(self, lab: "Lab") -> None:
        pass

    def status(self, lab: "Lab") -> dict:
        return {"combined": self.combined, "ldap": list(self.ldap), "extra_orgs": self.extra_orgs,
                "trust": self.trust}


def default_services(options: "LabOptions") -> list[Service]:
    """The services `lab up` starts, in order (stopped in reverse): the whole system."""
    from lab.orgs import contracted
    from lab.services.charon import GatewayService
    from lab.services.cloud import CloudService
    from lab.services.engine import EngineService
    from lab.services.ldap import LdapService
    from lab.services.firmware import FirmwareService
    from lab.services.panel import PanelService
    from lab.services.org_agents import DeskService, GatewayAgentService
    from lab.services.card_readers import NfcReaderService
    from lab.services.pcscd import PcscdService, VcardService
    from lab.services.radius import RadiusService
    from lab.services.wan_delay import WanDelayService

    services: list[Service] = []
    if options.wan_rtt_ms > 0:
        services.append(WanDelayService(options.wan_rtt_ms))
    cert = options.trust == "cert"
    services += [CloudService(), CloudSeed(options.combined, options.ldap, options.extra_orgs, options.trust)]
    for org in contracted(options.extra_orgs):
        services += [GatewayService(org, cert_mode=cert), RadiusService(org, radsec=cert)]
        if org in options.ldap:
            services.append(LdapService(org))
        services += [GatewayAgentService(org, cert_mode=cert), DeskService(org, cert_mode=cert)]
    services += [PcscdService(), VcardService(), NfcReaderService(), EngineService(),
                 FirmwareService(options.tunnel_backend), PanelService()]
    return services
