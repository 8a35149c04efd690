"""One organization's session on the device: what it holds, and the purge that ends it.

A `Session` owns every org-bearing resource the runtime created: the secret keeper, its sandbox slot
(`firmware/sandboxes.py`: the sandbox with its charon and tunnel, its firewall and door, the session
tmpfs with the session cupsd in it) and the watcher threads. `purge()` removes all of them, in an
order that never leaves a secret reachable (stop accepting jobs first, destroy the spool, then the
tunnel and its credentials, then the sandbox), carries on past a failing step, and then *verifies*
independently: nothing of the slot remains (namespace, processes, mounts, link, door), and the
device's own network is as its policy says (firewall, kernel settings). Other sessions' sandboxes
are not touched. Without a `Session` (daemon start, a cleared fault) the purge sweeps every sandbox
no live session owns: the previous process may have died with sessions open.
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
    slot: object | None = None    # its SandboxSlot (firmware/sandboxes.py): where the session runs
    profile: SessionProfile | None = None  # only where a caller holds a profile itself (tests, tools)
    virtual_ip: str | None = None
    gateway: str | None = None  # the org's VPN gateway address (not secret): the sandbox's one door
    desk_keys: tuple[bytes, ...] = ()  # the org's desk public keys (not secret): job owner proofs
    outcomes_url: str | None = None  # the org's gateway agent: what became of delivered jobs
    local_id: str = ""               # the MFP's IKE identity (names the desks' queue on the panel)
    print_service: object | None = None  # hal.printer's session print service, once started
    print_service_ready: object | None = None  # the Future of its start (it starts beside IKE)
    jobs: dict[int, dict] = field(default_factory=dict)  # job id -> title, size, format, delivery id
    stop: threading.Event = field(default_factory=threading.Event)  # ends the watcher threads
    tunnel_lost: threading.Event = field(default_factory=threading.Event)  # its tunnel went down


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

    left: list[str] = []
    if session is not None:
        session.stop.set()
        if session.print_service is not None:
            step("jobs", session.print_service.purge_all)
            step("print service", session.print_service.stop)
        if session.slot is not None:
            step("sandbox", lambda: left.extend(devices.sandboxes.release(session.slot)))
    else:
        step("stale sandboxes", lambda: left.extend(devices.sandboxes.sweep()))
    if session is not None and session.profile is not None:
        session.profile.wipe()
        session.profile = None

    t0 = time.monotonic()
    leftovers = left + verify(devices)
    took.append(f"verify:{(time.monotonic() - t0) * 1000:.0f}")
    report = PurgeReport(ok=not leftovers, leftovers=tuple(leftovers), errors=tuple(errors))
    journal.record("purge", reason=reason, ok=report.ok, leftovers=len(leftovers), errors=len(errors),
                   ms=",".join(took))
    return report


def verify(devices: Devices) -> list[str]:
    """How the device's own domain differs from its policy after a purge (empty when it holds)."""
    try:
        return devices.network_leftovers()
    except Exception as exc:
        return [f"device network state unknown: {type(exc).__name__}"]
