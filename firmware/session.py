"""One organization's session on the device: what it holds, and the purge that ends it.

A `Session` owns every org-bearing resource the runtime created: the fetched profile (secrets in
wipeable buffers), the tunnel, the session tmpfs with the session cupsd in it, the session's gateway
in the device firewall, and the watcher threads. `purge()` removes all of them, in an order that never leaves a secret
reachable (stop accepting jobs first, destroy the spool, then the credentials), carries on past a
failing step, and then *verifies* each one independently. The device firewall itself stays (it is
installed once, at daemon start): the purge empties its gateway set, and the check finds a leftover
when the set is not empty, the table is missing or differs, or a kernel network setting is off, so a
device whose firewall did not install never leaves `Fault` for a session. It also serves at daemon start, when
there is no `Session` object and the previous process may have died with a session open.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from firmware import journal
from firmware.devices import Devices
from hal.directory.profile import SessionProfile


@dataclass
class Session:
    number: int
    org: str
    keeper: object | None = None  # the SecretKeeper process that alone holds the org's secrets
    profile: SessionProfile | None = None  # only where a caller holds a profile itself (tests, tools)
    virtual_ip: str | None = None
    gateway: str | None = None  # the org's VPN gateway address (not secret), admitted by the firewall
    desk_keys: tuple[bytes, ...] = ()  # the org's desk public keys (not secret): job owner proofs
    outcomes_url: str | None = None  # the org's gateway agent: what became of delivered jobs
    local_id: str = ""               # the MFP's IKE identity (names the desks' queue on the panel)
    print_service: object | None = None  # hal.printer's session print service, once started
    print_service_ready: object | None = None  # the Future of its start (it starts beside IKE)
    jobs: dict[int, dict] = field(default_factory=dict)  # job id -> title, size, format, delivery id
    stop: threading.Event = field(default_factory=threading.Event)  # ends the watcher threads


@dataclass(frozen=True)
class PurgeReport:
    ok: bool
    leftovers: tuple[str, ...]  # what could not be removed or verified (names only, no secrets)
    errors: tuple[str, ...]


def purge(devices: Devices, session: Session | None, reason: str) -> PurgeReport:
    """Remove every trace of the session (or of a crashed one), then verify. Blocking."""
    errors: list[str] = []
    took: list[str] = []  # per-step milliseconds, for the journal

    def step(name: str, fn) -> None:
        t0 = time.monotonic()
        try:
            fn()
        except Exception as exc:  # every step runs, whatever the one before did
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
        took.append(f"{name.replace(' ', '_')}:{(time.monotonic() - t0) * 1000:.0f}")

    if session is not None:
        session.stop.set()
        if session.print_service is not None:
            step("jobs", session.print_service.purge_all)
            step("print service", session.print_service.stop)
    # A session cupsd left by a crashed daemon is found through its pid file in the tmpfs.
    step("stale print service", lambda: devices.stop_stale_print_service())
    step("session tmpfs", devices.session_fs.unmount)
    step("tunnel down", devices.tunnel.down)
    step("tunnel credentials", devices.tunnel.purge)
    step("firewall gateways", devices.firewall.forget_gateways)
    if session is not None and session.profile is not None:
        session.profile.wipe()
        session.profile = None

    t0 = time.monotonic()
    leftovers = verify(devices)
    took.append(f"verify:{(time.monotonic() - t0) * 1000:.0f}")
    report = PurgeReport(ok=not leftovers, leftovers=tuple(leftovers), errors=tuple(errors))
    journal.record("purge", reason=reason, ok=report.ok, leftovers=len(leftovers), errors=len(errors),
                   ms=",".join(took))
    return report


def verify(devices: Devices) -> list[str]:
    """What of any session is still on the device (empty when clean)."""
    left: list[str] = []
    left += devices.session_fs.leftovers()
    try:
        inv = devices.tunnel.inventory()
        left += [f"charon {k}: {v}" for k, v in inv.items() if v]
    except Exception as exc:
        left.append(f"charon inventory unknown: {type(exc).__name__}")
    try:
        left += devices.network_leftovers()
    except Exception as exc:
        left.append(f"device network state unknown: {type(exc).__name__}")
    left += devices.stale_print_service_leftovers()
    return left
