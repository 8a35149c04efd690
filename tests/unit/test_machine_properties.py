"""Properties of the session state machine over arbitrary event sequences (hypothesis).

A driver turns drawn abstract events into concrete ones that usually carry the current session
and attempt numbers (so sessions really progress) and sometimes stale ones. Properties:
(a) a TunnelDown in an org-bearing state is followed by a Purge before any later FetchProfile or
    BringUpTunnel; (b) two sessions never overlap: no BringUpTunnel after another without a Purge
    between; (c) ReleaseJobs names only jobs of the user the server accepted in that session, whose
    origin was inside the remote traffic selectors; (d) the machine never raises; (e) after Fault,
    no FetchProfile until FaultCleared.
"""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware import machine as m
from firmware.effects import Authenticate, BringUpTunnel, FetchProfile, Purge, ReleaseJobs
from firmware.events import (AuthAccepted, AuthPinRequired, AuthRejected, AuthUnavailable, Boot,
                             CardTapped, CardUnreadable, FaultCleared, JobArrived, JobGone, JobPrinted,
                             LookupFailed, Pin, PinCancelled, PinEntered, Policy, PrintServiceFailed,
                             PrintServiceUp, ProfileFetched, PurgeDone, ReleaseFailed, Released, Shutdown,
                             Tick, TunnelDown, TunnelFailed, TunnelUp)

LAN = "10.20.0.0/24"
USERS = ("alice", "bob", "carol")
ORGS = ("acme", "globex")
ORIGINS = ("10.20.0.50", "10.20.0.51", "10.77.0.20", "192.0.2.9", "not-an-ip")

KINDS = ("tap", "unreadable", "fetched", "lookup_failed", "tunnel_up", "tunnel_failed", "tunnel_down",
         "ps_up", "ps_failed", "accepted", "rejected", "pin_required", "unavailable", "pin", "pin_cancel",
         "released", "release_failed", "job", "printed", "gone", "purge_ok", "purge_bad", "tick", "shutdown",
         "fault_cleared")

abstract = st.tuples(st.sampled_from(KINDS), st.sampled_from(USERS), st.sampled_from(ORGS),
                     st.sampled_from(ORIGINS), st.integers(1, 40), st.booleans(), st.floats(0, 5000))


def concrete(state, kind, user, org, origin, job, stale, dt, at):
    session = getattr(state, "session", 0) + (7 if stale else 0)
    attempt = state.s.attempt if hasattr(state, "s") else 0
    policy = Policy(idle_timeout_s=300, max_hold_s=3600, combined_mode=job % 2 == 0)
    return {
        "tap": lambda: CardTapped(at, user, org, "04AABB"),
        "unreadable": lambda: CardUnreadable(at, "read-error"),
        "fetched": lambda: ProfileFetched(at, session, getattr(state, "org", org), (LAN,), policy),
        "lookup_failed": lambda: LookupFailed(at, session, "refused"),
        "tunnel_up": lambda: TunnelUp(at, session, "10.20.0.200", (LAN,)),
        "tunnel_failed": lambda: TunnelFailed(at, session, "auth"),
        "tunnel_down": lambda: TunnelDown(at, session, "peer"),
        "ps_up": lambda: PrintServiceUp(at, session),
        "ps_failed": lambda: PrintServiceFailed(at, session, "x"),
        "accepted": lambda: AuthAccepted(at, session, attempt, getattr(state, "user", user)),
        "rejected": lambda: AuthRejected(at, session, attempt, user, "no"),
        "pin_required": lambda: AuthPinRequired(at, session, attempt, user, b"st", "PIN"),
        "unavailable": lambda: AuthUnavailable(at, session, attempt, "down"),
        "pin": lambda: PinEntered(at, session, Pin("2468")),
        "pin_cancel": lambda: PinCancelled(at, session),
        "released": lambda: Released(at, session, tuple(getattr(state, "job_ids", ()))),
        "release_failed": lambda: ReleaseFailed(at, session, tuple(getattr(state, "job_ids", ())), "x"),
        "job": lambda: JobArrived(at, session, job, user, origin),
        "printed": lambda: JobPrinted(at, session, job),
        "gone": lambda: JobGone(at, session, job),
        "purge_ok": lambda: PurgeDone(at, session, True),
        "purge_bad": lambda: PurgeDone(at, session, False, ("left",)),
        "tick": lambda: Tick(at),
        "shutdown": lambda: Shutdown(at),
        "fault_cleared": lambda: FaultCleared(at),
    }[kind]()


def run(draws):
    """Drive the machine; return [(state_before, event, state_after, effects)]."""
    state, at, trace = m.initial(), 0.0, []
    event = Boot(at)
    nxt, effects = m.step(state, event)
    trace.append((state, event, nxt, effects))
    state = nxt
    for kind, user, org, origin, job, stale, dt in draws:
        at += dt
        event = concrete(state, kind, user, org, origin, job, stale and kind != "tick", dt, at)
        nxt, effects = m.step(state, event)  # (d): must not raise
        trace.append((state, event, nxt, effects))
        state = nxt
    return trace


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.lists(abstract, max_size=60))
def test_tunnel_down_always_purges_before_any_new_session(draws):
    owed = False
    for before, event, _after, effects in run(draws):
        if isinstance(event, TunnelDown) and isinstance(before, m.ORG_BEARING) \
                and event.session == before.session:
            owed = not any(isinstance(e, Purge) for e in effects)
            assert not owed, (before, event, effects)
        for e in effects:
            if isinstance(e, Purge):
                owed = False
            assert not (owed and isinstance(e, (FetchProfile, BringUpTunnel))), (before, event)


@SETTINGS
@given(st.lists(abstract, max_size=60))
def test_sessions_never_overlap(draws):
    tunnel_open = False
    for before, event, _after, effects in run(draws):
        for e in effects:
            if isinstance(e, BringUpTunnel):
                assert not tunnel_open, (before, event)
                tunnel_open = True
            elif isinstance(e, Purge):
                tunnel_open = False


@SETTINGS
@given(st.lists(abstract, max_size=80))
def test_release_only_the_accepted_users_own_jobs_from_the_tunnel(draws):
    accepted: dict[int, str] = {}  # session -> user the server accepted last
    arrived: dict[tuple[int, int], tuple[str, str]] = {}  # (session, job) -> (user, origin)
    lan = ipaddress.ip_network(LAN)
    for before, event, _after, effects in run(draws):
        session = getattr(before, "session", None)
        if isinstance(event, JobArrived) and event.session == session:
            arrived.setdefault((event.session, event.job_id), (event.user, event.origin_ip))
        for e in effects:
            if isinstance(e, Authenticate):
                accepted.pop(e.session, None)  # a new authentication: nobody is accepted yet
            if isinstance(e, ReleaseJobs):
                if isinstance(event, AuthAccepted):
                    accepted[e.session] = event.user
                assert accepted.get(e.session) == e.user, (before, event, e)
                for job in e.job_ids:
                    user, origin = arrived[(e.session, job)]
                    assert user == e.user
                    assert ipaddress.ip_address(origin) in lan
        if isinstance(event, AuthAccepted) and event.session == session:
            accepted[event.session] = event.user


@SETTINGS
@given(st.lists(abstract, max_size=60))
def test_no_lookup_while_faulted(draws):
    faulted = False
    for before, event, after, effects in run(draws):
        if isinstance(event, FaultCleared):
            faulted = False
        for e in effects:
            assert not (faulted and isinstance(e, FetchProfile)), (before, event)
        if isinstance(after, m.Fault):
            faulted = True
