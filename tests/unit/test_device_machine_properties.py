"""Properties of the device machine over arbitrary event sequences across 2-3 orgs (hypothesis).

Each abstract step becomes a concrete event against the current device, mostly the answer a
session waits for (so sequences open, serve and end many sessions), sometimes a tap, a tick, a
tunnel drop, a failed purge, an old session number, a fault cleared or junk. After every step:

(a) an event addressed to one session (its number, or a tap of its org) changes no other
    session's state, opens no other session, and its effects name no other session;
(b) purging a session (its TunnelDown, then its PurgeDone) leaves every other session identical;
(c) session numbers are unique among open sessions, and every new number is above every number
    handed out before (`issued` only grows);
(d) never more than `max_sessions` sessions are open (one purging for a waiting tap counts);
(e) `step` never raises and never takes its fail-closed path (`device-error`);
and also: one session per org (a slot waiting to serve an org counts as that org's), no lookup
starts while a device fault is latched, and an eviction ends the least recently used session that
holds and prints nothing, only at the limit.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware import device_machine as dm
from firmware import machine as m
from firmware.effects import Audit, FetchProfile, Purge
from firmware.events import (AuthAccepted, AuthPinRequired, AuthRejected, Boot, CardTapped, CardUnreadable,
                             ChooseNext, FaultCleared, JobArrived, JobGone, JobPrinted, JobsChosen, LoggedOut,
                             LookupFailed, Pin, PinEntered, Policy, PrintServiceUp, ProfileFetched, PurgeDone,
                             Released, Shutdown, Tick, TunnelDown, TunnelUp)

ORGS = ["acme", "globex", "initech"]
USERS = ["alice", "bob"]
LAN = ("10.20.0.0/24",)
OWN = ("10.77.0.0/24",)
POLICIES = [Policy(), Policy(combined_mode=True), Policy(idle_timeout_s=10, max_hold_s=30),
            Policy(idle_timeout_s=10, max_hold_s=30, end_after_print=True)]
KINDS = ["next"] * 14 + ["tap"] * 6 + ["tick", "tunnel_down", "purge_a", "purge_failed", "job", "printed",
                                       "gone", "fault_cleared", "boot", "unreadable", "stale", "chosen",
                                       "logged_out", "choose_next", "junk", "lookup_failed", "rejected"]

step_strategy = st.tuples(
    st.sampled_from(KINDS),
    st.sampled_from([0.0, 0.5, 1.0, 5.0, 20.0, 200.0]),   # time advance
    st.integers(0, len(ORGS) - 1),                        # which org (and its session)
    st.integers(0, len(USERS) - 1),
    st.integers(1, 5),                                    # job id / choice
    st.integers(0, len(POLICIES) - 1),
    st.sampled_from([0, 0, 1, -1, -2]),                   # session offset for "stale"
)


def target(device, o):
    """The session of org `o` if it has one, else some open session (None when none)."""
    state = dm.by_org(device).get(ORGS[o])
    if state is None and device.sessions:
        state = device.sessions[o % len(device.sessions)]
    return state


def answer(state, at, u, job, pol):
    """The event `state` (a session machine's) is waiting for."""
    n = state.session
    if isinstance(state, m.LookingUp):
        return ProfileFetched(at, n, state.org, LAN, POLICIES[pol], OWN)
    if isinstance(state, m.Connecting):
        return TunnelUp(at, n, "10.20.0.200", LAN)
    if isinstance(state, m.StartingPrintService):
        return PrintServiceUp(at, n)
    if isinstance(state, m.Ready):
        return [JobArrived(at, n, job, USERS[u], "10.20.0.50", proof="ok"),
                CardTapped(at, USERS[u], state.s.org), Tick(at)][job % 3]
    if isinstance(state, m.Authenticating):
        if job == 5:
            return AuthPinRequired(at, n, state.s.attempt, state.user)
        return AuthAccepted(at, n, state.s.attempt, state.user)
    if isinstance(state, m.AwaitingPin):
        return PinEntered(at, n, Pin(b"1234"))
    if isinstance(state, m.Releasing):
        return Released(at, n, state.job_ids)
    if isinstance(state, m.Purging):
        return PurgeDone(at, n, job != 5, () if job != 5 else ("left",))
    if isinstance(state, m.Fault):
        return FaultCleared(at)
    return Tick(at)


def concrete(device, at, kind, o, u, job, pol, off):
    state = target(device, o)
    if kind == "next":
        if device.startup is not None:
            return answer(device.startup, at, u, 1, pol) if not isinstance(device.startup, m.Starting) else Boot(at)
        return answer(state, at, u, job, pol) if state is not None else CardTapped(at, USERS[u], ORGS[o])
    n = state.session if state is not None else device.issued
    return {
        "tap": lambda: CardTapped(at, USERS[u], ORGS[o]),
        "tick": lambda: Tick(at),
        "tunnel_down": lambda: TunnelDown(at, n),
        "purge_failed": lambda: PurgeDone(at, n, False, ("left",)),
        "job": lambda: JobArrived(at, n, job, USERS[u], "10.20.0.50", proof="ok"),
        "printed": lambda: JobPrinted(at, n, job),
        "gone": lambda: JobGone(at, n, job),
        "fault_cleared": lambda: FaultCleared(at),
        "boot": lambda: Boot(at),
        "unreadable": lambda: CardUnreadable(at, "read-error"),
        "stale": lambda: JobArrived(at, device.issued + off, job, USERS[u], "10.20.0.50", proof="ok"),
        "chosen": lambda: JobsChosen(at, n, None),
        "logged_out": lambda: LoggedOut(at, n),
        "choose_next": lambda: ChooseNext(at, n),
        "junk": lambda: object(),
        "lookup_failed": lambda: LookupFailed(at, n, "unreachable"),
        "rejected": lambda: AuthRejected(at, n, getattr(getattr(state, "s", None), "attempt", 0), USERS[u]),
        "shutdown": lambda: Shutdown(at),
    }[kind]()


def addressed(device, event):
    """The open session an event is addressed to (its number, or a tap of its org), or None."""
    number = getattr(event, "session", None)
    if type(number) is int and not isinstance(event, CardTapped):
        return number if any(s.session == number for s in device.sessions) else None
    if isinstance(event, CardTapped) and device.booted and not device.stopping and device.fault is None:
        return dm._number_for_org(device, event.org)
    return None


def orgs_served(device):
    """Every org a slot serves or will serve (a purging slot's waiting tap), once per slot."""
    orgs = []
    for s in device.sessions:
        waiting = s.then.org if isinstance(s, m.Purging) and s.then is not None else None
        orgs += list({dm.org_of(s), waiting} - {None})
    return orgs


class Checked:
    def __init__(self, limits):
        self.limits = limits
        self.device = dm.initial()
        self.seen = {0}  # every session number ever open

    def step(self, event):
        before = self.device
        after, effects = dm.step(before, event, self.limits)  # (e): raises -> the test fails
        audits = [e.event for e in effects if isinstance(e, Audit)]
        assert "device-error" not in audits, (event, effects)
        # (c)
        numbers = [s.session for s in after.sessions]
        assert len(numbers) == len(set(numbers)), after
        assert after.issued >= before.issued and all(x <= after.issued for x in numbers)
        new = {s.session for s in after._machines()} - {s.session for s in before._machines()}
        assert all(x > before.issued for x in new), (before, event, after)
        assert not (new & self.seen)
        self.seen |= new
        for e in effects:
            if isinstance(e, FetchProfile):
                assert e.session > before.issued and e.session in numbers
        # (d)
        assert len(after.sessions) <= self.limits.max_sessions
        # an eviction ends the least recently used session that holds and prints nothing
        for e in effects:
            if isinstance(e, Audit) and e.event == "session-evicted":
                free = [s for s in before.sessions if isinstance(s, m.Ready) and not s.s.held and not s.s.printing]
                victim = dm.session_of(before, e.fields["session"])
                assert victim in free and victim.s.last_activity == min(s.s.last_activity for s in free)
                assert len(before.sessions) == self.limits.max_sessions
        # one session per org
        orgs = orgs_served(after)
        assert len(orgs) == len(set(orgs)), after
        # a latched fault: no lookup
        if before.fault is not None:
            assert not any(isinstance(e, FetchProfile) for e in effects)
        # (a)
        n = addressed(before, event)
        if n is not None:
            others = [s for s in before.sessions if s.session != n]
            assert all(any(o is s for s in after.sessions) for o in others), (event, before, after)
            assert len(after.sessions) <= len(before.sessions)
            own = {n} | new
            assert all(e.session in own for e in effects if isinstance(getattr(e, "session", None), int)), effects
        self.device = after
        return after, effects


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([2, 3]), st.lists(step_strategy, max_size=60), st.integers(0, 90))
def test_sessions_never_touch_each_other(max_sessions, steps, shutdown_at):
    run = Checked(dm.DeviceLimits(max_sessions=max_sessions))
    at = 0.0
    for i, (kind, dt, o, u, job, pol, off) in enumerate(steps):
        at += dt
        if i == shutdown_at:
            kind = "shutdown"
        if kind == "purge_a":
            state = target(run.device, o)
            if not isinstance(state, m.ORG_BEARING):
                continue
            others = [s for s in run.device.sessions if s is not state]
            run.step(TunnelDown(at, state.session))
            run.step(PurgeDone(at, state.session, True))
            # (b)
            assert all(any(o is s for s in run.device.sessions) for o in others)
            continue
        run.step(concrete(run.device, at, kind, o, u, job, pol, off))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step_strategy, max_size=40))
def test_a_purge_is_exactly_one_sessions(steps):
    """Every Purge a step asks for is of a session open (or being re-purged) after it, or the
    startup's; never of another org's session than the event's."""
    run = Checked(dm.DeviceLimits(max_sessions=2))
    at = 0.0
    for kind, dt, o, u, job, pol, off in steps:
        at += dt
        if kind == "purge_a":
            kind = "tunnel_down"
        event = concrete(run.device, at, kind, o, u, job, pol, off)
        before = run.device
        after, effects = run.step(event)
        for e in effects:
            if isinstance(e, Purge):
                assert dm.session_of(after, e.session) is not None, (before, event, effects)
