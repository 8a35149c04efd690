"""The device machine: many organizations' sessions at once, each one its own `firmware.machine`.

`step(device, event, limits) -> (device, effects)` is pure like `machine.step` (no I/O, no clock, no
hal imports) and never raises. It keeps what the sessions share — the card reader, the panel's
focus, the device-wide startup purge, the fault latch, the shutdown — and composes one
`machine.State` per open session (`Device.sessions`, in opening order). Each session's machine
runs exactly as it does alone; the device only decides which one an event goes to:

- An event with a `session` number goes to the session of that number; a number no open session
  has is dropped (`Audit("stale-event")`). Numbers are unique device-wide and only grow
  (`Device.issued`), so a late answer of an ended session never reaches another.
- A tap goes to its org's open session; another org's tap opens a new session beside the others
  (up to `DeviceLimits.max_sessions`). At the limit it ends the least recently used `Ready`
  session that holds and prints nothing, and that slot serves the tap once its purge verified
  (with a fresh number); when no session can end, the panel says when the first max hold expires.
- `Tick` and `Shutdown` go to every session, `FaultCleared` to every session in `Fault`.
- A session whose purge verified (its machine reached `Idle`) is removed.
- While the clock is not synchronised (`ClockChecked`), no tap opens a session: TLS to the cloud,
  RadSec and IKE check validity periods against a clock that may be days off. The panel says
  "clock not synchronised"; the startup purge and open sessions go on.

Panel: a step's `ShowPanel` effects are kept only when they come from the focus session (the one
the last tap went to), from the device itself, or when no session has the focus.

Effects pass through unchanged (each carries its session number; the runtime routes it to that
session's sandbox), plus one of this module's own, `Renumber`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from firmware import machine, panel
from firmware.effects import Audit, ShowPanel, StartSpareKeeper
from firmware.events import Boot, CardTapped, CardUnreadable, ClockChecked, FaultCleared, PurgeDone, Shutdown, Tick


@dataclass(frozen=True)
class DeviceLimits(machine.Limits):
    """The session machines' limits plus the device's own (`sessions.max`)."""
    max_sessions: int = 4


LIMITS = DeviceLimits()


@dataclass(frozen=True)
class Renumber:
    """What the runtime keeps under session number `old` (a faulted session's sandbox; 0: the
    device-wide leftovers of the startup purge) is from now on session `new`: a re-purge after
    `FaultCleared`, or the shutdown's purge of a faulted session, takes a fresh number so a late
    answer of the purge that failed is stale. Comes right before that `Purge(new, ...)`; no answer."""
    old: int
    new: int


@dataclass(frozen=True)
class Device:
    """The whole device. `sessions` never holds an `Idle` (a verified purge removes the session)."""
    sessions: tuple = ()                     # machine states, one per open session, in opening order
    focus: int | None = None                 # the session the panel shows (the last tap's), None: none
    taps: tuple[int, ...] = ()               # sessions in the order taps last went to them (last: latest)
    issued: int = 0                          # the highest session number handed out so far
    startup: object = machine.Starting()     # the startup purge's machine (session 0); None once verified
    stopping: bool = False                   # Shutdown came: every session purges, then stops
    clock_synced: bool = True                # the last ClockChecked said so (none yet: not required)

    @property
    def booted(self) -> bool:
        """The startup purge of a crashed daemon's leftovers verified: sessions may open."""
        return self.startup is None

    @property
    def fault(self) -> tuple[str, ...] | None:
        """The latched device fault (the leftovers named), None when no machine is in `Fault`."""
        faults = [s for s in self._machines() if isinstance(s, machine.Fault)]
        return tuple(x for f in faults for x in f.leftovers) if faults else None

    @property
    def stopped(self) -> bool:
        """Shut down and every session's purge answered (or there was none)."""
        return self.stopping and all(isinstance(s, machine.Stopped) for s in self._machines())

    def _machines(self) -> tuple:
        return self.sessions if self.startup is None else (self.startup, *self.sessions)


def initial() -> Device:
    return Device()


# -- views --------------------------------------------------------------------------------------

def org_of(state: object) -> str | None:
    """The org a session state serves or ends (None for Fault, Stopped, Idle, Starting)."""
    if isinstance(state, machine.ORG_BEARING):
        return state.org if isinstance(state, machine.LookingUp) else state.s.org
    return state.org if isinstance(state, machine.Purging) else None


def by_org(device: Device) -> dict[str, machine.State]:
    """The open sessions keyed by the org they serve (or are purging)."""
    return {org: state for state in device.sessions if (org := org_of(state)) is not None}


def session_of(device: Device, number: object) -> machine.State | None:
    """The open session numbered `number` (the startup purge's machine too), or None."""
    if type(number) is not int:
        return None
    return next((s for s in device._machines() if s.session == number), None)


def focused(device: Device) -> machine.State:
    """The state the panel shows: the focus session's, else a session-less one (Starting or the
    startup purge, Fault, Purging while shutting down, Stopped, Idle) numbered `issued`."""
    if device.stopped:
        ends = [s for s in device._machines() if isinstance(s, machine.Stopped)]
        return machine.Stopped(device.issued, all(s.clean for s in ends),
                               tuple(x for s in ends for x in s.leftovers))
    if device.startup is not None:
        return device.startup
    state = session_of(device, device.focus)
    if state is not None and not isinstance(state, machine.Stopped):
        return state
    if device.fault is not None:
        return machine.Fault(device.issued, device.fault)
    if device.stopping:
        return machine.Purging(device.issued, None, "shutdown", 0.0, notice=panel.text("purging"),
                               notice_key="purging", stop=True)
    return machine.Idle(device.issued)


# -- the step -----------------------------------------------------------------------------------

def step(device: Device, event: object, limits: machine.Limits = LIMITS) -> tuple[Device, list]:
    """The next device and the effects to run, in order. Never raises: a bug fails closed (every
    session that holds org data is purged)."""
    try:
        return _step(device, event, limits)
    except Exception as exc:  # noqa: BLE001 -- fail closed rather than crash the daemon
        audit = Audit("device-error", {"event": type(event).__name__, "error": type(exc).__name__})
        return _fail_closed(device, _at(event), audit)


def _step(device: Device, event: object, limits: machine.Limits) -> tuple[Device, list]:
    name = type(event).__name__
    if device.stopped:
        return device, [] if isinstance(event, Tick) else [Audit("ignored-event", {"state": "Stopped",
                                                                                    "event": name})]
    handler = HANDLERS.get(type(event))
    if handler is not None:
        nxt, effects = handler(device, event, limits)
    elif hasattr(event, "session"):
        number = event.session
        if session_of(device, number) is None:
            return device, [Audit("stale-event", {"event": name, "session": number})]
        nxt, effects = _feed(device, number, event, limits)
    else:
        return device, [Audit("ignored-event", {"state": "Device", "event": name})]
    if nxt.stopped:
        end = focused(nxt)
        effects = [*effects, _show("stopped"),
                   Audit("device-stopped", {"clean": end.clean, "leftovers": list(end.leftovers)})]
    return nxt, effects


def _feed(device: Device, number: int, event: object, limits: machine.Limits) -> tuple[Device, list]:
    """Step the machine of session `number` with `event`, and settle the device around it."""
    before = state = session_of(device, number)
    renumbering = isinstance(state, machine.Fault) and isinstance(event, (FaultCleared, Shutdown))
    if renumbering:  # machine re-purges a fault as session+1: make that the next device-wide number
        state = replace(state, session=device.issued)
    elif isinstance(state, machine.Purging) and state.then is not None and isinstance(event, PurgeDone) \
            and event.ok:
        # the waiting tap's lookup takes the next device-wide number; none while a fault is latched
        state = replace(state, issued=device.issued) if device.fault is None else replace(state, then=None)
    nxt, effects = machine.step(state, event, limits)
    if renumbering:
        if nxt.session == device.issued + 1:
            effects = [Renumber(before.session, nxt.session), *effects]
        else:  # the machine did not re-purge: keep its own number
            nxt = replace(nxt, session=before.session) if nxt.session == device.issued else nxt
    shown = device.focus is None or device.focus == before.session or before is device.startup
    if not shown:
        effects = [e for e in effects if not isinstance(e, ShowPanel)]
    ended = isinstance(nxt, machine.Idle)
    focus, taps = device.focus, tuple(n for n in device.taps if n != before.session)
    if focus == before.session and before is not device.startup:
        # an ended focus session hands the panel back to the open session tapped last before it
        alive = {s.session for s in device.sessions if s is not before}
        focus = next((n for n in reversed(taps) if n in alive), None) if ended else nxt.session
    if not ended and before is not device.startup and before.session in device.taps:
        taps = (*taps, nxt.session) if nxt.session != before.session else device.taps
    issued = device.issued if ended else max(device.issued, nxt.session)
    if before is device.startup:
        return replace(device, startup=None if ended else nxt, issued=issued, focus=focus), effects
    others = tuple(s for s in device.sessions if s is not before)
    if isinstance(before, machine.Purging) and isinstance(nxt, machine.LookingUp):
        sessions = (*others, nxt)  # the waiting tap's session opens now: last in opening order
    elif ended:
        sessions = others
    else:
        sessions = tuple(nxt if s is before else s for s in device.sessions)
    return replace(device, sessions=sessions, issued=issued, focus=focus, taps=taps), effects


def _focus(device: Device, number: int) -> Device:
    """`number` has the panel: the session the last tap went to."""
    return replace(device, focus=number, taps=(*(n for n in device.taps if n != number), number))


def _each(device: Device, event: object, limits: machine.Limits, numbers: list[int]) -> tuple[Device, list]:
    effects: list = []
    for number in numbers:
        if session_of(device, number) is not None:
            device, more = _feed(device, number, event, limits)
            effects += more
    return device, effects


# -- device-wide events ---------------------------------------------------------------------------

def _boot(device, event, limits):
    if device.startup is None:
        return device, [Audit("ignored-event", {"state": "Device", "event": "Boot"})]
    return _feed(device, device.startup.session, event, limits)


def _tick(device, event, limits):
    return _each(device, event, limits, [s.session for s in device._machines()])


def _fault_cleared(device, event, limits):
    faulted = [s.session for s in device._machines() if isinstance(s, machine.Fault)]
    if not faulted:
        return device, [Audit("ignored-event", {"state": "Device", "event": "FaultCleared"})]
    return _each(device, event, limits, faulted)


def _shutdown(device, event, limits):
    return _each(replace(device, stopping=True), event, limits, [s.session for s in device._machines()])


def _card_unreadable(device, event, limits):
    if not device.clock_synced:  # (a card known by its UID is not looked up then either)
        return device, _clock_refusal(None)
    return device, machine._card_unreadable(None, event, limits)[1]


def _clock(device, event, limits):
    synced = event.synchronised is True
    if synced == device.clock_synced:
        return device, []
    device = replace(device, clock_synced=synced)
    effects: list = [Audit("clock", {"synchronised": synced})]
    if device.startup is None and not device.sessions and not device.stopping:
        effects.append(_show("idle" if synced else "clock-unsynchronised"))
    return device, effects


def _clock_refusal(org: object) -> list:
    return [_show("clock-unsynchronised"), Audit("tap-refused", {"org": org, "reason": "clock-unsynchronised"})]


def _tap(device, event, limits):
    if device.stopping:
        return device, [_show("busy"), Audit("tap-refused", {"org": event.org, "stopping": True})]
    if device.fault is not None:
        return device, machine._refuse_tap(None, event, limits)[1]
    if device.startup is not None:  # the startup purge first ("busy")
        return _feed(device, device.startup.session, event, limits)
    if not device.clock_synced:
        return device, _clock_refusal(event.org)
    number = _number_for_org(device, event.org)
    if number is not None:
        device = _focus(device, number)
        state = session_of(device, number)
        if isinstance(state, machine.Purging) and state.then is None and not state.stop:
            # the org's session is ending: its next one serves this tap once the purge verified
            device = _replace_session(device, state, replace(state, then=event))
            return device, [_show("busy"), Audit("tap-waits", {"session": number, "org": event.org})]
        return _feed(device, number, event, limits)
    if len(device.sessions) < max(1, getattr(limits, "max_sessions", LIMITS.max_sessions)):
        return _open(device, event, limits)
    return _evict(device, event, limits)


def _number_for_org(device: Device, org: object) -> int | None:
    """The session a tap of `org` goes to: its org's, or a slot whose purge will serve that org."""
    for state in device.sessions:
        if org_of(state) == org:
            return state.session
    for state in device.sessions:
        if isinstance(state, machine.Purging) and state.then is not None and state.then.org == org:
            return state.session
    return None


def _open(device, event, limits):
    state, effects = machine.step(machine.Idle(device.issued), event, limits)
    if not isinstance(state, machine.LookingUp):  # the machine refused the tap: nothing opens
        return device, effects
    device = _focus(replace(device, sessions=(*device.sessions, state), issued=state.session), state.session)
    return device, [*effects, StartSpareKeeper()]  # the lookup took the spare sandbox: prepare the next


def _evict(device, event, limits):
    """At the limit: end the least recently used session that holds and prints nothing; its slot
    serves the tap once its purge verified. None: the panel says when the first max hold ends."""
    idle = [(state.s.last_activity, i) for i, state in enumerate(device.sessions)
            if isinstance(state, machine.Ready) and not state.s.held and not state.s.printing]
    if not idle:
        return device, _sessions_full(device, event)
    victim = device.sessions[min(idle)[1]]
    nxt, effects = machine._purge(victim, event.at, "another organization", "switching-org", then=event)
    # the person tapping is told a session ends, not whose
    effects = [ShowPanel(panel.screen_text("switching-org", "en"), "switching-org")
               if isinstance(e, ShowPanel) else e for e in effects]
    device = _focus(_replace_session(device, victim, nxt), nxt.session)
    return device, [Audit("session-evicted", {"session": victim.session, "org": victim.s.org,
                                              "for": event.org}), *effects]


def _sessions_full(device: Device, event: CardTapped) -> list:
    ends = [t for s in device.sessions if (t := _max_hold_ends(s)) is not None]
    minutes = max(1, math.ceil((min(ends) - event.at) / 60)) if ends else None
    shown = (_show("sessions-full", count=minutes) if minutes is not None
             else ShowPanel(panel.screen_text("sessions-full", "en"), "sessions-full"))
    return [shown, Audit("sessions-full", {"org": event.org, "sessions": len(device.sessions),
                                           "minutes": minutes})]


# -- helpers --------------------------------------------------------------------------------------

def _max_hold_ends(state: object) -> float | None:
    """When the machine ends this session at the latest for its org's max hold (None: holds nothing)."""
    if not isinstance(state, machine.SERVING) or not state.s.held:
        return None
    times = [j.arrived_at for j in state.s.held] + [state.s.policy.max_hold_s]
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in times):
        return None
    return min(times[:-1]) + times[-1]


def _replace_session(device: Device, old: object, new: object) -> Device:
    return replace(device, sessions=tuple(new if s is old else s for s in device.sessions))


def _show(key: str, **fields: object) -> ShowPanel:
    return ShowPanel(panel.text(key, **fields), key, tuple(fields.items()))


def _at(event: object) -> float:
    at = getattr(event, "at", 0.0)
    return at if isinstance(at, (int, float)) else 0.0


def _fail_closed(device: Device, at: float, audit: Audit) -> tuple[Device, list]:
    """A bug in the device's own logic: purge every session that holds org data."""
    try:
        sessions, effects = [], [audit]
        for state in device.sessions:
            if isinstance(state, machine.ORG_BEARING):
                state, more = machine._purge(state, at, "internal error", "internal-error")
                effects += more
            sessions.append(state)
        return replace(device, sessions=tuple(sessions)), effects
    except Exception:  # noqa: BLE001 -- the bug is in the purge itself: leave the sessions as they are
        return device, [audit]


HANDLERS = {
    Boot: _boot,
    Tick: _tick,
    CardTapped: _tap,
    CardUnreadable: _card_unreadable,
    ClockChecked: _clock,
    FaultCleared: _fault_cleared,
    Shutdown: _shutdown,
}
