"""hal/net: the MFP's network plumbing around a tunnel session.

- `addresses`: where the virtual IP sits (which interface), waiting for it, and cleaning up what a
  killed IKE daemon leaves behind (`flush_stale_ipsec`).
- `firewall`: an nftables table of our own (`inet tenantprint`) that lets the IPP port in only
  through IPsec, installed atomically, removable and verifiable.

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
    """The firewall table could not be installed, removed or does not match what we installed."""


def ns_argv(netns: str | None, cmd: list[str]) -> list[str]:
    """`cmd` run in network namespace `netns` (unchanged when None)."""
    return cmd if netns is None else ["nsenter", f"--net=/run/netns/{netns}", "--", *cmd]
