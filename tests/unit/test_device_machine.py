"""The device machine, rule by rule: many orgs' sessions at once, each its own session machine.

Pure: no I/O, no clock. `core` effects (everything but ShowPanel and Audit) are compared exactly.
"""

from __future__ import annotations

from dataclasses import replace

from firmware import device_machine as dm
from firmware import machine as m
from firmware import panel
from firmware.effects import (Audit, Authenticate, FetchProfile, PreparePrintService, Purge, ReleaseJobs,
                              ReportJobs, ShowPanel, StartSpareKeeper)
from firmware.events import (AuthAccepted, AuthPinRequired, Boot, CardTapped, CardUnreadable, FaultCleared,
                             JobArrived, JobPrinted, Policy, PrintServiceUp, ProfileFetched, PurgeDone,
                             Released, Shutdown, Tick, TunnelDown, TunnelUp)

TWO = dm.DeviceLimits(max_sessions=2)
POLICY = Policy(idle_timeout_s=300, max_hold_s=3600)
LAN = ("10.20.0.0/24",)
OWN = ("10.77.0.0/24",)


def core(effects):
    return [e for e in effects if not isinstance(e, (ShowPanel, Audit))]


def keys(effects):
    return [e.key for e in effects if isinstance(e, ShowPanel)]


def audits(effects):
    return [e.event for e in effects if isinstance(e, Audit)]


def run(device, *events, limits=TWO):
    effects = []
    for event in events:
        device, more = dm.step(device, event, limits)
        effects += more
    return device, effects


def booted():
    return run(dm.initial(), Boot(0.0), PurgeDone(0.5, 0, True))[0]


def serve(device, org, user, at, policy=POLICY, limits=TWO):
    """A session of `org` opened by `user`'s tap at `at`, brought to Ready: (device, its number)."""
    device, _ = run(device, CardTapped(at, user, org), limits=limits)
    n = device.issued
    device, _ = run(device, ProfileFetched(at, n, org, LAN, policy, OWN), TunnelUp(at, n, "10.20.0.200", LAN),
                    PrintServiceUp(at, n), limits=limits)
    assert isinstance(dm.session_of(device, n), m.Ready)
    return device, n


def job(at, n, job_id, user):
    return JobArrived(at, n, job_id, user, "10.20.0.50", proof="ok")


def two_orgs():
    device, a = serve(booted(), "acme", "alice", 10.0)
    device, g = serve(device, "globex", "grace", 20.0)
    return device, a, g


# -- boot -----------------------------------------------------------------------------------------

def test_boot_purges_leftovers_once_and_taps_wait():
    device, effects = run(dm.initial(), Boot(0.0))
    assert core(effects) == [Purge(0, "startup")] and keys(effects) == ["starting"]
    assert not device.booted and isinstance(dm.focused(device), m.Purging)
    device, effects = run(device, CardTapped(0.2, "alice", "acme"))
    assert effects == [ShowPanel(panel.text("busy"), "busy")] and device.sessions == ()
    device, effects = run(device, PurgeDone(0.5, 0, True))
    assert device.booted and core(effects) == [StartSpareKeeper()]
    assert dm.focused(device) == m.Idle(0)


def test_a_failed_boot_purge_latches_the_fault_until_cleared():
    device, effects = run(dm.initial(), Boot(0.0), PurgeDone(0.5, 0, False, ("netns left",)))
    assert device.fault == ("netns left",) and not device.booted
    device, effects = run(device, CardTapped(1.0, "alice", "acme"))
    assert keys(effects) == ["out-of-service"] and core(effects) == []
    device, effects = run(device, FaultCleared(2.0))
    assert core(effects) == [dm.Renumber(0, 1), Purge(1, "fault cleared")] and device.fault is None
    device, effects = run(device, PurgeDone(2.5, 0, True))  # the failed purge's late answer
    assert audits(effects) == ["stale-event"] and not device.booted
    device, effects = run(device, PurgeDone(3.0, 1, True), CardTapped(4.0, "alice", "acme"))
    assert device.booted and FetchProfile(2, "acme") in effects


# -- many orgs at once ----------------------------------------------------------------------------

def test_a_new_org_opens_a_session_beside_the_others():
    device, a = serve(booted(), "acme", "alice", 10.0)
    acme = dm.session_of(device, a)
    device, effects = run(device, CardTapped(20.0, "grace", "globex"))
    assert core(effects) == [FetchProfile(2, "globex"), PreparePrintService(2), StartSpareKeeper()]
    assert device.sessions[0] is acme and device.focus == 2 and device.issued == 2
    assert set(dm.by_org(device)) == {"acme", "globex"}


def test_two_orgs_each_release_their_own_jobs():
    device, a, g = two_orgs()
    device, _ = run(device, job(30.0, a, 7, "alice"), job(31.0, g, 7, "grace"), job(32.0, g, 8, "grace"))
    device, effects = run(device, CardTapped(40.0, "alice", "acme"), CardTapped(41.0, "grace", "globex"))
    assert [e for e in core(effects)] == [Authenticate(a, 1, "alice", "acme"), Authenticate(g, 1, "grace", "globex")]
    device, effects = run(device, AuthAccepted(42.0, g, 1, "grace"), AuthAccepted(43.0, a, 1, "alice"))
    assert core(effects) == [ReleaseJobs(g, "grace", (7, 8)), ReleaseJobs(a, "alice", (7,))]
    device, effects = run(device, Released(44.0, a, (7,)), Released(45.0, g, (7, 8)))
    assert core(effects) == [ReportJobs(a, "released", (7,)), ReportJobs(g, "released", (7, 8))]
    assert dm.session_of(device, a).s.printing == (7,) and dm.session_of(device, g).s.printing == (7, 8)


def test_a_tap_goes_to_its_orgs_session_and_takes_the_focus():
    device, a, g = two_orgs()
    assert device.focus == g
    device, effects = run(device, CardTapped(30.0, "bob", "acme"))
    assert device.focus == a and core(effects) == [Authenticate(a, 1, "bob", "acme")]
    assert keys(effects) == ["authenticating"] and len(device.sessions) == 2


def test_at_the_limit_the_least_recently_used_idle_session_ends_for_the_tap():
    device, a, g = two_orgs()
    globex = dm.session_of(device, g)
    device, effects = run(device, CardTapped(50.0, "ivan", "initech"))
    assert core(effects) == [Purge(a, "another organization")] and device.focus == a
    assert effects[0] == Audit("session-evicted", {"session": a, "org": "acme", "for": "initech"})
    assert keys(effects) == ["switching-org"] and all("acme" not in e.message for e in effects if isinstance(e, ShowPanel))
    device, effects = run(device, CardTapped(51.0, "ivan", "initech"))  # tapped again while it ends
    assert keys(effects) == ["busy"] and core(effects) == []
    device, effects = run(device, PurgeDone(52.0, a, True))
    assert core(effects) == [FetchProfile(3, "initech"), PreparePrintService(3), StartSpareKeeper()]
    assert device.sessions == (globex, m.LookingUp(3, "initech", "ivan", 52.0)) and device.focus == 3


def test_a_session_holding_or_printing_is_never_ended_for_another_org():
    device, a, g = two_orgs()
    device, _ = run(device, job(30.0, a, 7, "alice"))  # acme is older but holds a job: globex ends
    device, effects = run(device, CardTapped(50.0, "ivan", "initech"))
    assert core(effects) == [Purge(g, "another organization")]


def test_when_every_session_holds_jobs_the_panel_says_when_the_first_frees():
    device, a, g = two_orgs()
    device, _ = run(device, job(100.0, a, 7, "alice"), job(30.0, g, 8, "grace"))
    nxt, effects = run(device, CardTapped(400.0, "ivan", "initech"))  # globex's job expires at 3630
    assert nxt == device and core(effects) == []
    shown = [e for e in effects if isinstance(e, ShowPanel)]
    assert shown == [ShowPanel(panel.text("sessions-full", count=54), "sessions-full", (("count", 54),))]
    assert Audit("sessions-full", {"org": "initech", "sessions": 2, "minutes": 54}) in effects


def test_sessions_full_without_a_held_job_says_so_without_a_time():
    device, _ = run(booted(), CardTapped(1.0, "alice", "acme"), CardTapped(2.0, "grace", "globex"))
    device, effects = run(device, CardTapped(3.0, "ivan", "initech"))
    assert [(e.key, e.fields) for e in effects if isinstance(e, ShowPanel)] == [("sessions-full", ())]
    assert "{" not in effects[0].message and len(device.sessions) == 2


def test_one_orgs_tunnel_drop_purges_only_that_org():
    device, a, g = two_orgs()
    device, _ = run(device, job(30.0, a, 7, "alice"), job(31.0, g, 8, "grace"))
    globex = dm.session_of(device, g)
    device, effects = run(device, TunnelDown(40.0, a))
    assert core(effects) == [Purge(a, "tunnel down")] and dm.session_of(device, g) is globex
    assert keys(effects) == []  # globex has the focus: acme's line is not shown
    device, effects = run(device, PurgeDone(41.0, a, True))
    assert device.sessions == (globex,) and core(effects) == [StartSpareKeeper()]


def test_the_focus_sessions_end_shows_its_notice_and_hands_the_panel_back():
    device, a, g = two_orgs()
    device, effects = run(device, TunnelDown(40.0, g))
    assert keys(effects) == ["tunnel-down"]
    device, effects = run(device, PurgeDone(41.0, g, True))
    # the notice shows; the panel goes back to the open session tapped before (acme's)
    assert keys(effects) == ["tunnel-down"] and device.focus == a
    assert dm.focused(device) is dm.session_of(device, a)
    device, effects = run(device, TunnelDown(42.0, a))
    assert keys(effects) == ["tunnel-down"]
    device, effects = run(device, PurgeDone(43.0, a, True))
    assert device.focus is None and dm.focused(device) == m.Idle(2)


def test_stale_session_numbers_are_dropped():
    device, a, _ = two_orgs()
    for event in (job(30.0, 9, 7, "alice"), AuthAccepted(30.0, 0, 1, "alice"), PurgeDone(30.0, 0, True)):
        nxt, effects = run(device, event)
        assert nxt == device and audits(effects) == ["stale-event"] and core(effects) == []
    device, _ = run(device, TunnelDown(40.0, a), PurgeDone(41.0, a, True))
    nxt, effects = run(device, JobPrinted(42.0, a, 7))
    assert nxt == device and audits(effects) == ["stale-event"]


def test_a_tap_of_an_ending_sessions_org_is_served_after_its_purge():
    device, a, _ = two_orgs()
    device, _ = run(device, TunnelDown(40.0, a))
    device, effects = run(device, CardTapped(41.0, "alice", "acme"))
    assert keys(effects) == ["busy"] and core(effects) == [] and device.focus == a
    device, effects = run(device, PurgeDone(42.0, a, True))
    assert core(effects) == [FetchProfile(3, "acme"), PreparePrintService(3), StartSpareKeeper()]
    assert device.focus == 3 and dm.by_org(device)["acme"] == m.LookingUp(3, "acme", "alice", 42.0)


def test_each_session_keeps_its_own_timers():
    device, a, g = two_orgs()
    device, _ = run(device, job(30.0, g, 8, "grace"))
    device, effects = run(device, Tick(10.0 + 300.0))  # acme idle since 10; globex holds a job
    assert core(effects) == [Purge(a, "idle timeout")] and isinstance(dm.session_of(device, g), m.Ready)
    device, effects = run(device, Tick(30.0 + 3600.0))
    assert core(effects) == [ReportJobs(g, "expired", (8,)), Purge(g, "max hold")]


def test_a_faulted_session_latches_the_device_but_the_others_run_on():
    device, a, g = two_orgs()
    device, _ = run(device, TunnelDown(40.0, a), PurgeDone(41.0, a, False, ("sa left",)))
    assert device.fault == ("sa left",) and isinstance(dm.session_of(device, a), m.Fault)
    device, effects = run(device, CardTapped(42.0, "grace", "globex"))
    assert keys(effects) == ["out-of-service"] and core(effects) == []
    device, effects = run(device, job(43.0, g, 8, "grace"))
    assert dm.session_of(device, g).s.held[0].job_id == 8
    device, effects = run(device, FaultCleared(44.0))
    assert core(effects) == [dm.Renumber(a, 3), Purge(3, "fault cleared")] and device.fault is None
    assert dm.session_of(device, a) is None and device.issued == 3
    device, effects = run(device, PurgeDone(45.0, 3, True), CardTapped(46.0, "ivan", "initech"))
    assert [s.session for s in device.sessions] == [g, 4] and FetchProfile(4, "initech") in effects


def test_an_eviction_whose_purge_fails_drops_the_tap():
    device, a, _ = two_orgs()
    device, _ = run(device, CardTapped(50.0, "ivan", "initech"))
    device, effects = run(device, PurgeDone(51.0, a, False, ("cupsd left",)))
    assert core(effects) == [] and dm.session_of(device, a) == m.Fault(a, ("cupsd left",))
    assert device.issued == 2 and "initech" not in dm.by_org(device)


def test_shutdown_purges_every_session_then_stops():
    device, a, g = two_orgs()
    device, effects = run(device, Shutdown(50.0))
    assert core(effects) == [Purge(a, "shutdown"), Purge(g, "shutdown")] and not device.stopped
    device, effects = run(device, CardTapped(51.0, "ivan", "initech"))
    assert keys(effects) == ["busy"] and core(effects) == []
    device, effects = run(device, PurgeDone(52.0, a, True))
    assert not device.stopped
    device, effects = run(device, PurgeDone(53.0, g, True))
    assert device.stopped and keys(effects)[-1] == "stopped" and dm.focused(device) == m.Stopped(2, True)
    assert run(device, Tick(60.0)) == (device, [])


def test_shutdown_with_no_session_stops_at_once():
    device, effects = run(booted(), Shutdown(1.0))
    assert device.stopped and core(effects) == [] and keys(effects) == ["stopped"]


def test_the_pin_wait_is_the_focus_sessions():
    device, a, _ = two_orgs()
    device, _ = run(device, CardTapped(30.0, "alice", "acme"), AuthPinRequired(31.0, a, 1, "alice"))
    assert isinstance(dm.focused(device), m.AwaitingPin) and m.pin_open(dm.focused(device), 32.0, TWO)
    device, _ = run(device, CardTapped(33.0, "grace", "globex"))
    assert not m.pin_open(dm.focused(device), 34.0, TWO)


def test_an_unreadable_card_is_shown_whatever_has_the_focus():
    device, _, _ = two_orgs()
    nxt, effects = run(device, CardUnreadable(30.0, "unsupported"))
    assert nxt == device and keys(effects) == ["card-unsupported"]


def test_the_default_limit_is_four_sessions():
    device = booted()
    for i, org in enumerate(["a", "b", "c", "d", "e"]):
        device, effects = run(device, CardTapped(float(i), "u", org), limits=dm.LIMITS)
    assert len(device.sessions) == 4 and keys(effects) == ["sessions-full"]
    assert dm.DeviceLimits().max_sessions == 4 and isinstance(dm.LIMITS, m.Limits)


def test_a_plain_machine_limits_works_too():
    _, effects = run(booted(), CardTapped(1.0, "alice", "acme"), limits=m.Limits())
    assert FetchProfile(1, "acme") in effects


def test_junk_never_raises():
    device, a, _ = two_orgs()
    for event in (object(), None, CardTapped(1.0, "u", ["unhashable"]), replace(job(1.0, a, 1, "u"), session="1"),
                  PurgeDone(1.0, True, True)):
        _, effects = dm.step(device, event, TWO)
        assert "device-error" not in audits(effects)
