"""hal/net: the MFP's network plumbing around a tunnel session.

- `addresses`: where the virtual IP sits (which interface), waiting for it, and cleaning up what a
  killed IKE daemon leaves behind (`flush_stale_ipsec`).
- `firewall`: the device's nftables table of our own (`inet tenantprint`), default deny: installed
  once at firmware start, atomically, and verified; IKE/ESP only with the current session's gateway
  (a set the session fills and the purge empties), the IPP port only through IPsec, ssh only from
  configured management addresses, nothing forwarded.
- `sysctls`: the kernel settings of a host that never routes (ip_forward, arp_ignore, arp_announce,
  rp_filter) and their check.

Every function takes `netns`: the network namespace to act in (the lab runs the MFP in one);
None means the caller's own. Errors form one small tree below `NetError`.
"""

from __future__ import annotations

IPP_PORT = 631


class NetError(Exception):
    """A network operation failed; the message names the operation and the cause."""


class AddressNotFound(NetError):
    """The address did not appear on any interface in time."""


class FirewallError(NetError):
    """The firewall table could not be installed or changed, or does not match what we installed."""


def ns_argv(netns: str | None, cmd: list[str]) -> list[str]:
    """`cmd` run in network namespace `netns` (unchanged when None)."""
    return cmd if netns is None else ["nsenter", f"--net=/run/netns/{netns}", "--", *cmd]
