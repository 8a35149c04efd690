"""The session state machine, row by row: (state, event) -> (state, effects, panel line).

`core` effects (everything but ShowPanel and Audit) are compared exactly; the panel line, where a
row names one, is compared exactly too. Pure: no I/O, no clock.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from firmware import machine as m
from firmware import panel
from firmware.effects import (AskPin, Audit, Authenticate, BringUpTunnel, EndLookup, FetchProfile,
                              PinAccepted, PinFailed, PreparePrintService, Purge, PurgeJob, ReleaseJobs,
                              ReportJobs, ShowPanel, StartPrintService, StartSpareKeeper)
from firmware.events import (AuthAccepted, AuthPinRequired, AuthRejected, AuthUnavailable, Boot,
                             CardTapped, CardUnreadable, FaultCleared, JobArrived, JobGone,
                             JobPrinted, LookupFailed, Pin, PinCancelled, PinEntered, Policy,
                             PrintServiceFailed, PrintServiceUp, ProfileFetched, PurgeDone,
                             ReleaseFailed, Released, Shutdown, Tick, TunnelDown, TunnelFailed,
                             TunnelUp)

LAN = (ipaddress.ip_network("10.20.0.0/24"),)
POLICY = Policy(idle_timeout_s=300, max_hold_s=3600, combined_mode=False)
COMBINED = replace(POLICY, combined_mode=True)
S = m.Session(1, "acme", "alice", POLICY, LAN, virtual_ip="10.20.0.200", last_activity=100.0)
J7 = m.HeldJob(7, "alice", "10.20.0.50", 110.0)
J5 = m.HeldJob(5, "alice", "10.20.0.51", 120.0)   # higher id, arrived later than 7... see J3
J3 = m.HeldJob(3, "alice", "10.20.0.52", 130.0)
JB = m.HeldJob(8, "bob", "10.20.0.60", 105.0)
HELD = replace(S, held=(J5, JB, J7, J3))
AUTHING = m.Authenticating(replace(HELD, attempt=1), "alice", 200.0)
AUTHED_C = replace(S, policy=COMBINED, authed_user="alice", attempt=1)
TAP_ALICE = CardTapped(200.0, "alice", "acme", "04A1B2C3D4E5F6")
TAP_GLOBEX = CardTapped(200.0, "carol", "globex", "04FFEEDDCC")
PIN = Pin(b"2468")  # a Pin compares by identity: the rows hand the same one in and expect it out
OWN = ("10.77.0.0/24",)  # the device's own (office LAN) network
FETCHED = ProfileFetched(201.0, 1, "acme", ("10.20.0.0/24",), POLICY, OWN)


def purging(reason, key, *, session=1, org="acme", at=200.0, **kw):
    return m.Purging(session, org, reason, at, notice=panel.text(key, org=org or ""), **kw)


def core(effects):
    return [e for e in effects if not isinstance(e, (ShowPanel, Audit))]


def shown(effects):
    lines = [e.message for e in effects if isinstance(e, ShowPanel)]
    return lines[-1] if lines else None


ROWS = [
    # id, state, event, next state, core effects, panel line (None: not checked)
    ("boot purges leftovers", m.Starting(), Boot(0.0),
     m.Purging(0, None, "startup", 0.0), [Purge(0, "startup")], panel.text("starting")),
    ("startup purge verified -> Idle", m.Purging(0, None, "startup", 0.0), PurgeDone(1.0, 0, True),
     m.Idle(0), [StartSpareKeeper()], panel.text("idle")),
    ("startup purge not verified -> Fault", m.Purging(0, None, "startup", 0.0),
     PurgeDone(1.0, 0, False, ("charon conns: 1",)), m.Fault(0, ("charon conns: 1",)), [],
     panel.text("fault")),
    ("tap in Idle -> lookup", m.Idle(0), TAP_ALICE,
     m.LookingUp(1, "acme", "alice", 200.0), [FetchProfile(1, "acme"), PreparePrintService(1)],
     "Looking up acme…"),
    ("unreadable card stays Idle", m.Idle(0), CardUnreadable(1.0, "read-error"),
     m.Idle(0), [], "Card could not be read — try again"),
    ("unsupported card", m.Idle(0), CardUnreadable(1.0, "unsupported"),
     m.Idle(0), [], "This card is not supported"),
    ("profile -> Connecting", m.LookingUp(1, "acme", "alice", 200.0), FETCHED,
     m.Connecting(m.Session(1, "acme", "alice", POLICY, LAN, device_networks=(ipaddress.ip_network(OWN[0]),),
                            last_activity=201.0), 201.0),
     [BringUpTunnel(1, "acme")], "Connecting to acme…"),
    *[(f"profile whose selectors {why} is refused", m.LookingUp(1, "acme", "alice", 200.0),
       replace(FETCHED, remote_ts=ts), purging(reason, "lookup-malformed", at=201.0), [Purge(1, reason)],
       "Directory sent an invalid profile — try again later")
      for why, ts, reason in [("are a default route", ("0.0.0.0/0",), "selector too wide"),
                              ("are shorter than /8", ("10.0.0.0/7",), "selector too wide"),
                              ("overlap the office LAN", ("10.77.0.0/16",), "selector overlaps the device's networks"),
                              ("lie inside the office LAN", ("10.77.0.128/25",), "selector overlaps the device's networks")]],
    ("a profile the device cannot check against its networks is refused", m.LookingUp(1, "acme", "alice", 200.0),
     replace(FETCHED, device_networks=("unknown",)), purging("device networks unknown", "lookup-malformed", at=201.0),
     [Purge(1, "device networks unknown")], None),
    ("profile for another org fails closed", m.LookingUp(1, "acme", "alice", 200.0),
     replace(FETCHED, org="globex"),
     purging("invalid profile", "lookup-malformed", at=201.0), [Purge(1, "invalid profile")], None),
    ("profile with bad selectors fails closed", m.LookingUp(1, "acme", "alice", 200.0),
     replace(FETCHED, remote_ts=("not-a-net",)),
     purging("invalid profile", "lookup-malformed", at=201.0), [Purge(1, "invalid profile")], None),
    # the print service started beside the lookup: a failed lookup purges it, with its own message
    *[(f"lookup {kind} -> purge", m.LookingUp(1, "acme", "alice", 200.0),
       LookupFailed(201.0, 1, kind), m.Purging(1, "acme", f"lookup {kind}", 201.0, notice=line),
       [Purge(1, f"lookup {kind}")], line)
      for kind, line in [("refused", "No contract for this organization"),
                         ("unreachable", "Directory unreachable — try again later"),
                         ("malformed", "Directory sent an invalid profile — try again later"),
                         ("device-rejected", "This printer is not enrolled — call the operator")]],
    ("tunnel up -> start print service", m.Connecting(replace(S, virtual_ip=""), 200.0),
     TunnelUp(201.0, 1, "10.20.0.200", ("10.20.0.0/25",)),
     m.StartingPrintService(replace(S, remote_ts=(ipaddress.ip_network("10.20.0.0/25"),),
                                    last_activity=201.0), 201.0),
     [StartPrintService(1, "10.20.0.200")], "Preparing the printer for acme…"),
    *[(f"a virtual IP {why} is refused", m.Connecting(replace(S, device_networks=(ipaddress.ip_network(OWN[0]),)), 200.0),
       TunnelUp(201.0, 1, vip, ("10.20.0.0/24",)),
       purging("virtual IP refused", "virtual-ip-refused", at=201.0), [Purge(1, "virtual IP refused")],
       "acme's network gave this printer an address it must not use — session ended")
      for why, vip in [("outside the org's selectors (a coworker's LAN address)", "10.77.0.20"),
                       ("that is loopback", "127.0.0.1"), ("that is garbage", "10.20.0.300"),
                       ("that is the org network's address", "10.20.0.0"),
                       ("that is the broadcast address", "10.20.0.255")]],
    ("a virtual IP inside the device's own networks is refused even inside the selectors",
     m.Connecting(replace(S, device_networks=(ipaddress.ip_network("10.20.0.0/24"),)), 200.0),
     TunnelUp(201.0, 1, "10.20.0.200", ("10.20.0.0/24",)),
     purging("virtual IP refused", "virtual-ip-refused", at=201.0), [Purge(1, "virtual IP refused")], None),
    ("tunnel selectors wider than the profile refused", m.Connecting(S, 200.0),
     TunnelUp(201.0, 1, "10.20.0.200", ("0.0.0.0/0",)),
     purging("tunnel selectors refused", "tunnel-failed", at=201.0),
     [Purge(1, "tunnel selectors refused")], None),
    ("tunnel failed -> purge", m.Connecting(S, 200.0), TunnelFailed(201.0, 1, "AUTH_FAILED"),
     purging("tunnel failed", "tunnel-failed", at=201.0), [Purge(1, "tunnel failed")],
     "Could not connect to acme's network"),
    ("after a failed lookup, Idle keeps its message",
     m.Purging(1, "acme", "lookup refused", 201.0, notice="No contract for this organization"),
     PurgeDone(202.0, 1, True), m.Idle(1), [StartSpareKeeper()], "No contract for this organization"),
    ("after a failed tunnel, Idle keeps the message",
     purging("tunnel failed", "tunnel-failed"), PurgeDone(202.0, 1, True), m.Idle(1), [StartSpareKeeper()],
     "Could not connect to acme's network"),
    ("print service up -> Ready", m.StartingPrintService(S, 200.0), PrintServiceUp(201.0, 1),
     m.Ready(replace(S, last_activity=201.0)), [], panel.text("ready", org="acme")),
    ("combined: print service up authenticates the opener",
     m.StartingPrintService(replace(S, policy=COMBINED), 200.0), PrintServiceUp(201.0, 1),
     m.Authenticating(replace(S, policy=COMBINED, attempt=1, last_activity=201.0), "alice", 201.0),
     [Authenticate(1, 1, "alice", "acme")], "Checking alice…"),
    ("print service failed -> purge", m.StartingPrintService(S, 200.0),
     PrintServiceFailed(201.0, 1, "cupsd"),
     purging("print service failed", "print-service-failed", at=201.0),
     [Purge(1, "print service failed")], None),
    ("same-org tap in Ready -> authenticate", m.Ready(HELD), TAP_ALICE,
     replace(AUTHING, since=200.0, s=replace(AUTHING.s, last_activity=200.0)),
     [Authenticate(1, 1, "alice", "acme")], "Checking alice…"),
    ("other-org tap, nothing held -> look that org up first; this session stays", m.Ready(S), TAP_GLOBEX,
     m.Switching(replace(S, issued=2), m.LookingUp(2, "globex", "carol", 200.0)),
     [FetchProfile(2, "globex")], "Looking up globex…"),
    ("the other org's profile arrived -> purge this session, keep that lookup",
     m.Switching(replace(S, issued=2), m.LookingUp(2, "globex", "carol", 200.0)),
     replace(FETCHED, session=2, org="globex"),
     purging("another organization", "switching-org", at=201.0, issued=2,
             switch_to=(m.LookingUp(2, "globex", "carol", 200.0), replace(FETCHED, session=2, org="globex"))),
     [Purge(1, "another organization", keep_next=True)], "Ending acme's session…"),
    ("after the switch purge, the fetched org connects",
     purging("another organization", "switching-org", at=201.0, issued=2,
             switch_to=(m.LookingUp(2, "globex", "carol", 200.0), replace(FETCHED, session=2, org="globex"))),
     PurgeDone(203.0, 1, True),
     m.Connecting(m.Session(2, "globex", "carol", POLICY, LAN, device_networks=(ipaddress.ip_network(OWN[0]),),
                            last_activity=203.0), 203.0),
     [BringUpTunnel(2, "globex"), PreparePrintService(2), StartSpareKeeper()], "Connecting to globex…"),
    ("a card of an org the directory refuses costs the serving session nothing",
     m.Switching(replace(S, issued=2), m.LookingUp(2, "initech", "ivy", 200.0)), LookupFailed(201.0, 2, "refused"),
     m.Ready(replace(S, issued=2)), [EndLookup(2), StartSpareKeeper()], "No contract for this organization"),
    ("a refused profile of the other org costs the serving session nothing",
     m.Switching(replace(S, issued=2), m.LookingUp(2, "globex", "carol", 200.0)),
     replace(FETCHED, session=2, org="globex", remote_ts=("0.0.0.0/0",)),
     m.Ready(replace(S, issued=2)), [EndLookup(2), StartSpareKeeper()], None),
    ("the serving session's own answers still count while switching",
     m.Switching(replace(S, issued=2), m.LookingUp(2, "globex", "carol", 200.0)), JobArrived(201.0, 1, 9, "alice", "10.20.0.50", "ok"),
     m.Switching(replace(S, issued=2, held=(m.HeldJob(9, "alice", "10.20.0.50", 201.0),), last_activity=201.0),
                 m.LookingUp(2, "globex", "carol", 200.0)), [], None),
    ("the serving session's tunnel drops while switching -> purge, then look the other org up again",
     m.Switching(replace(S, issued=2), m.LookingUp(2, "globex", "carol", 200.0)), TunnelDown(201.0, 1),
     purging("tunnel down", "tunnel-down", at=201.0, issued=2, then=CardTapped(200.0, "carol", "globex")),
     [Purge(1, "tunnel down")], None),
    ("after that purge the new lookup never reuses the abandoned number",
     purging("tunnel down", "tunnel-down", at=201.0, issued=2, then=CardTapped(200.0, "carol", "globex")),
     PurgeDone(202.0, 1, True), m.LookingUp(3, "globex", "carol", 202.0),
     [FetchProfile(3, "globex"), PreparePrintService(3), StartSpareKeeper()], "Looking up globex…"),
    ("after a switch purge (old style), the remembered tap is looked up",
     purging("another organization", "switching-org", then=TAP_GLOBEX), PurgeDone(203.0, 1, True),
     m.LookingUp(2, "globex", "carol", 203.0), [FetchProfile(2, "globex"), PreparePrintService(2), StartSpareKeeper()],
     "Looking up globex…"),
    ("a locked user's tap is refused without asking the server", m.Ready(HELD), replace(TAP_ALICE, pin_locked=True),
     m.Ready(HELD), [], "Not authorized — too many wrong PINs, try again later"),
    ("combined: a locked opener is not authenticated", m.StartingPrintService(replace(S, policy=COMBINED, opener_locked=True), 200.0),
     PrintServiceUp(201.0, 1), m.Ready(replace(S, policy=COMBINED, opener_locked=True, last_activity=201.0)), [],
     "Not authorized — too many wrong PINs, try again later"),
    ("other-org tap with jobs held -> refused", m.Ready(HELD), TAP_GLOBEX,
     m.Ready(HELD), [], "Printer in use by acme — try again later"),
    ("accepted -> release the user's jobs, oldest first", AUTHING, AuthAccepted(201.0, 1, 1, "alice"),
     m.Releasing(replace(AUTHING.s, authed_user="alice", last_activity=201.0, panel_user="alice",
                         panel_since=201.0), "alice", (7, 5, 3),
                 201.0),
     [ReleaseJobs(1, "alice", (7, 5, 3))], "Releasing 3 job(s) for alice…"),
    ("accepted with nothing held -> Ready", replace(AUTHING, user="dave"),
     AuthAccepted(201.0, 1, 1, "dave"),
     m.Ready(replace(AUTHING.s, authed_user="dave", last_activity=201.0, panel_user="dave", panel_since=201.0)),
     [], "No jobs held for dave"),
    ("accepted for someone else is not a yes", AUTHING, AuthAccepted(201.0, 1, 1, "bob"),
     m.Ready(AUTHING.s), [], "Not authorized"),
    ("pin required -> ask", AUTHING, AuthPinRequired(201.0, 1, 1, "alice", b"\x01chal", "PIN:"),
     m.AwaitingPin(AUTHING.s, "alice", 201.0, b"\x01chal"), [AskPin(1, "alice", "PIN:")],
     "Enter your PIN"),
    ("pin entered -> authenticate with pin and challenge",
     m.AwaitingPin(AUTHING.s, "alice", 201.0, b"\x01chal"), PinEntered(205.0, 1, PIN),
     m.Authenticating(replace(AUTHING.s, attempt=2, last_activity=205.0), "alice", 205.0, with_pin=True),
     [Authenticate(1, 2, "alice", "acme", pin=PIN, state=b"\x01chal")], "Checking alice…"),
    ("a wrong PIN counts against the user, and reads like any refusal",
     replace(AUTHING, with_pin=True), AuthRejected(206.0, 1, 1, "alice", "Wrong PIN"),
     m.Ready(replace(AUTHING.s, last_activity=206.0)), [PinFailed("acme", "alice")], "Not authorized"),
    ("the right PIN starts the count again", replace(AUTHING, user="dave", with_pin=True),
     AuthAccepted(206.0, 1, 1, "dave"),
     m.Ready(replace(AUTHING.s, authed_user="dave", last_activity=206.0, panel_user="dave", panel_since=206.0)),
     [PinAccepted("acme", "dave")],
     "No jobs held for dave"),
    ("pin cancelled -> Ready", m.AwaitingPin(AUTHING.s, "alice", 201.0), PinCancelled(205.0, 1),
     m.Ready(AUTHING.s), [], "PIN entry cancelled"),
    ("pin timeout -> Ready", m.AwaitingPin(AUTHING.s, "alice", 201.0), Tick(231.0),
     m.Ready(AUTHING.s), [], "PIN entry timed out"),
    ("pin not yet timed out", m.AwaitingPin(AUTHING.s, "alice", 201.0), Tick(230.0),
     m.AwaitingPin(AUTHING.s, "alice", 201.0), [], None),
    ("rejected -> Ready with the server's message", AUTHING,
     AuthRejected(201.0, 1, 1, "alice", "Wrong PIN"),
     m.Ready(replace(AUTHING.s, last_activity=201.0)), [], "Not authorized"),
    ("a disabled user reads the same line as an unknown one", AUTHING,
     AuthRejected(201.0, 1, 1, "alice", "Account disabled"),
     m.Ready(replace(AUTHING.s, last_activity=201.0)), [], "Not authorized"),
    ("auth server unavailable -> Ready, jobs held", AUTHING, AuthUnavailable(201.0, 1, 1, "timeout"),
     m.Ready(AUTHING.s), [], "Authentication server unavailable — jobs stay held"),
    ("released -> Ready without those jobs", m.Releasing(HELD, "alice", (7, 5, 3), 201.0),
     Released(202.0, 1, (7, 5, 3)), m.Ready(replace(HELD, held=(JB,), printing=(7, 5, 3), last_activity=202.0)),
     [ReportJobs(1, "released", (7, 5, 3))],
     "Released 3 job(s) for alice"),
    ("release failed -> Ready, jobs stay held", m.Releasing(HELD, "alice", (7, 5, 3), 201.0),
     ReleaseFailed(202.0, 1, (7, 5, 3), "engine offline"), m.Ready(HELD), [],
     "Could not release the jobs — they stay held"),
    ("combined: more jobs arrived while releasing -> release them too",
     m.Releasing(replace(AUTHED_C, held=(J7, J5)), "alice", (7,), 201.0), Released(202.0, 1, (7,)),
     m.Releasing(replace(AUTHED_C, held=(J5,), printing=(7,), last_activity=202.0), "alice", (5,), 202.0),
     [ReportJobs(1, "released", (7,)), ReleaseJobs(1, "alice", (5,))], None),
    ("a redelivery of a job released before is purged and reported released again", m.Ready(S),
     JobArrived(201.0, 1, 9, "alice", "10.20.0.50", "already released"), m.Ready(S),
     [PurgeJob(1, 9, "released before"), ReportJobs(1, "released", (9,))], None),
    ("job from outside the tunnel is purged", m.Ready(S), JobArrived(201.0, 1, 9, "alice", "10.99.0.7"),
     m.Ready(S), [PurgeJob(1, 9, "not from the tunnel")], None),
    ("job with a garbage origin is purged", m.Ready(S), JobArrived(201.0, 1, 9, "alice", "localhost"),
     m.Ready(S), [PurgeJob(1, 9, "not from the tunnel")], None),
    *[(f"job whose owner proof is {why} is purged, never held", m.Ready(S),
       JobArrived(201.0, 1, 9, "alice", "10.20.0.50", proof), m.Ready(S), [PurgeJob(1, 9, "owner not proven")], None)
      for why, proof in [("missing", ""), ("forged", "bad signature"), ("replayed", "replayed")]],
    ("combined: an unproven job of the authenticated user is purged, not released", m.Ready(AUTHED_C),
     JobArrived(201.0, 1, 9, "alice", "10.20.0.50", "missing"), m.Ready(AUTHED_C),
     [PurgeJob(1, 9, "owner not proven")], None),
    ("job from inside the tunnel is held", m.Ready(S), JobArrived(201.0, 1, 9, "alice", "10.20.0.50", "ok"),
     m.Ready(replace(S, held=(m.HeldJob(9, "alice", "10.20.0.50", 201.0),), last_activity=201.0)),
     [], None),
    ("job before the tunnel is up is purged", m.LookingUp(1, "acme", "alice", 200.0),
     JobArrived(201.0, 1, 9, "alice", "10.20.0.50"), m.LookingUp(1, "acme", "alice", 200.0),
     [PurgeJob(1, 9, "not from the tunnel")], None),
    ("job while connecting is purged (selectors not negotiated yet)", m.Connecting(S, 200.0),
     JobArrived(201.0, 1, 9, "alice", "10.20.0.50"), m.Connecting(S, 200.0),
     [PurgeJob(1, 9, "not from the tunnel")], None),
    ("combined: the authenticated user's new job is released at once", m.Ready(AUTHED_C),
     JobArrived(201.0, 1, 9, "alice", "10.20.0.50", "ok"),
     m.Releasing(replace(AUTHED_C, held=(m.HeldJob(9, "alice", "10.20.0.50", 201.0),),
                         last_activity=201.0), "alice", (9,), 201.0),
     [ReleaseJobs(1, "alice", (9,))], None),
    ("combined: a job the engine failed to print comes back held, for its owner's own release",
     m.Ready(AUTHED_C), JobArrived(201.0, 1, 9, "alice", "10.20.0.50", "retry"),
     m.Ready(replace(AUTHED_C, held=(m.HeldJob(9, "alice", "10.20.0.50", 201.0),), last_activity=201.0)),
     [], None),
    ("combined: another user's job is held", m.Ready(AUTHED_C),
     JobArrived(201.0, 1, 9, "bob", "10.20.0.60", "ok"),
     m.Ready(replace(AUTHED_C, held=(m.HeldJob(9, "bob", "10.20.0.60", 201.0),), last_activity=201.0)),
     [], None),
    ("the engine's completed job leaves the printing list", m.Ready(replace(HELD, held=(JB,), printing=(7, 5))),
     JobPrinted(201.0, 1, 7), m.Ready(replace(HELD, held=(JB,), printing=(5,), last_activity=201.0)),
     [ReportJobs(1, "printed", (7,))], None),
    ("a released job the engine did not print leaves it too",
     m.Ready(replace(HELD, held=(JB,), printing=(7,))), JobGone(201.0, 1, 7, "not printed: aborted"),
     m.Ready(replace(HELD, held=(JB,), printing=(), last_activity=201.0)), [ReportJobs(1, "failed", (7,))],
     "A job could not be printed — it goes back to its desk to print again"),
    ("job gone leaves the held list", m.Ready(HELD), JobGone(201.0, 1, 7),
     m.Ready(replace(HELD, held=(J5, JB, J3), last_activity=201.0)), [], None),
    ("late Released in Ready: held -> printing", m.Ready(HELD), Released(201.0, 1, (7,)),
     m.Ready(replace(HELD, held=(J5, JB, J3), printing=(7,))), [ReportJobs(1, "released", (7,))], None),
    ("end_after_print: the last job printed ends the session (patent step 140)",
     m.Ready(replace(S, policy=replace(POLICY, end_after_print=True), printing=(7,))), JobPrinted(201.0, 1, 7),
     purging("printed", "printed-end", at=201.0), [ReportJobs(1, "printed", (7,)), Purge(1, "printed")],
     "Printed — session for acme ended"),
    ("end_after_print waits for the jobs still held",
     m.Ready(replace(HELD, policy=replace(POLICY, end_after_print=True), printing=(9,))), JobPrinted(201.0, 1, 9),
     m.Ready(replace(HELD, policy=replace(POLICY, end_after_print=True), last_activity=201.0)),
     [ReportJobs(1, "printed", (9,))], None),
    ("no idle timeout while a released job prints", m.Ready(replace(S, printing=(7,))), Tick(400.0),
     m.Ready(replace(S, printing=(7,))), [], None),
    ("idle timeout -> purge", m.Ready(S), Tick(400.0),
     purging("idle timeout", "idle-timeout", at=400.0), [Purge(1, "idle timeout")],
     "Session for acme ended (idle)"),
    ("no idle timeout while jobs are held", m.Ready(HELD), Tick(1000.0), m.Ready(HELD), [], None),
    ("max hold -> purge with the jobs", m.Ready(HELD), Tick(3705.0),
     purging("max hold", "max-hold", at=3705.0), [ReportJobs(1, "expired", (5, 8, 7, 3)), Purge(1, "max hold")],
     None),
    ("max hold while waiting for a PIN", m.AwaitingPin(HELD, "alice", 3700.0), Tick(3705.0),
     purging("max hold", "max-hold", at=3705.0), [ReportJobs(1, "expired", (5, 8, 7, 3)), Purge(1, "max hold")],
     None),
    ("shutdown in session -> purge then stop", m.Ready(S), Shutdown(201.0),
     purging("shutdown", "purging", at=201.0, stop=True), [Purge(1, "shutdown")], None),
    ("shutdown in Idle still purges", m.Idle(1), Shutdown(201.0),
     m.Purging(1, None, "shutdown", 201.0, notice=panel.text("purging"), stop=True),
     [Purge(1, "shutdown")], None),
    ("shutdown during a switch purge drops the remembered tap",
     purging("another organization", "switching-org", then=TAP_GLOBEX), Shutdown(201.0),
     purging("another organization", "switching-org", stop=True), [], None),
    ("shutdown purge done -> Stopped", purging("shutdown", "purging", stop=True),
     PurgeDone(202.0, 1, True), m.Stopped(1, True), [], "Switched off"),
    ("failed purge -> Fault (latched)", purging("tunnel down", "tunnel-down"),
     PurgeDone(202.0, 1, False, ("tmpfs mounted",)), m.Fault(1, ("tmpfs mounted",)), [],
     "Out of service — call the operator"),
    ("purge that never answers -> Fault", purging("tunnel down", "tunnel-down"), Tick(320.0),
     m.Fault(1, ("purge did not answer",)), [], None),
    ("tap in Fault refused", m.Fault(1), TAP_ALICE, m.Fault(1), [],
     "Out of service — call the operator"),
    ("fault cleared -> purge again", m.Fault(1), FaultCleared(300.0),
     m.Purging(2, None, "fault cleared", 300.0, notice=panel.text("purging")),
     [Purge(2, "fault cleared")], None),
    ("a late PurgeDone does not unlatch Fault", m.Fault(1), PurgeDone(301.0, 1, True), m.Fault(1),
     [], None),
    ("stale TunnelDown of an old session is dropped", m.Ready(replace(S, number=2)),
     TunnelDown(201.0, 1), m.Ready(replace(S, number=2)), [], None),
    ("stale auth answer of an old attempt is dropped", replace(AUTHING, s=replace(AUTHING.s, attempt=2)),
     AuthAccepted(201.0, 1, 1, "alice"), replace(AUTHING, s=replace(AUTHING.s, attempt=2)), [], None),
    ("stale ProfileFetched after a failed lookup is ignored", m.Idle(1),
     ProfileFetched(201.0, 1, "acme", ("10.20.0.0/24",), POLICY), m.Idle(1), [], None),
    ("late job of a purged session is ignored", m.Idle(1),
     JobArrived(201.0, 1, 9, "alice", "10.20.0.50"), m.Idle(1), [], None),
    ("lookup that never answers -> purge", m.LookingUp(1, "acme", "alice", 200.0), Tick(321.0),
     purging("step timeout", "step-timeout", at=321.0), [Purge(1, "step timeout")], None),
    ("tunnel that never comes up -> purge", m.Connecting(S, 200.0), Tick(321.0),
     purging("step timeout", "step-timeout", at=321.0), [Purge(1, "step timeout")], None),
    ("auth that never answers -> Ready", AUTHING, Tick(321.0), m.Ready(AUTHING.s), [],
     "Authentication server unavailable — jobs stay held"),
    ("release that never answers -> Ready", m.Releasing(HELD, "alice", (7,), 200.0), Tick(321.0),
     m.Ready(HELD), [], "Could not release the jobs — they stay held"),
    ("same-org tap while connecting -> busy", m.Connecting(S, 200.0), TAP_ALICE,
     m.Connecting(S, 200.0), [], "Busy — please wait"),
    ("other-org tap while switching -> busy", m.Switching(S, m.LookingUp(2, "globex", "carol", 200.0)),
     CardTapped(200.5, "heidi", "globex"), m.Switching(S, m.LookingUp(2, "globex", "carol", 200.0)), [],
     "Printer in use by acme — try again later"),
    ("other-org tap while authenticating -> in use", AUTHING, TAP_GLOBEX, AUTHING, [],
     "Printer in use by acme — try again later"),
    ("tap while purging -> wait", purging("tunnel down", "tunnel-down"), TAP_ALICE,
     purging("tunnel down", "tunnel-down"), [], "Busy — please wait"),
    ("tap after stop is ignored", m.Stopped(1, True), TAP_ALICE, m.Stopped(1, True), [], None),
]

ORG_BEARING_STATES = [
    m.LookingUp(1, "acme", "alice", 200.0), m.Connecting(S, 200.0), m.StartingPrintService(S, 200.0),
    m.Ready(HELD), m.Switching(HELD, m.LookingUp(2, "globex", "carol", 200.0)), AUTHING,
    m.AwaitingPin(AUTHING.s, "alice", 201.0, b"c"),
    m.Releasing(HELD, "alice", (7,), 201.0),
]


@pytest.mark.parametrize("state,event,want_state,want_core,want_panel",
                         [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_row(state, event, want_state, want_core, want_panel):
    got_state, effects = m.step(state, event)
    assert got_state == want_state
    assert core(effects) == want_core
    if want_panel is not None:
        assert shown(effects) == want_panel
    assert all(isinstance(e, (ShowPanel, Audit)) or e in want_core for e in effects)


@pytest.mark.parametrize("state", ORG_BEARING_STATES, ids=lambda s: type(s).__name__)
def test_tunnel_down_purges_every_org_bearing_state(state):
    nxt, effects = m.step(state, TunnelDown(500.0, 1, "dpd"))
    # a switch under way is not lost: that org's tap is looked up again once this purge is done
    assert nxt.then == (CardTapped(200.0, "carol", "globex") if isinstance(state, m.Switching) else None)
    assert replace(nxt, then=None) == purging("tunnel down", "tunnel-down", at=500.0)
    assert core(effects) == [Purge(1, "tunnel down")]
    assert shown(effects) == "Connection to acme lost — session ended"


@pytest.mark.parametrize("state", ORG_BEARING_STATES, ids=lambda s: type(s).__name__)
def test_shutdown_purges_every_org_bearing_state(state):
    nxt, effects = m.step(state, Shutdown(500.0))
    assert isinstance(nxt, m.Purging) and nxt.stop
    assert core(effects) == [Purge(1, "shutdown")]


def test_every_table_entry_names_a_handler():
    names = [*m.TRANSITIONS.values(), *m.IN_SESSION.values(), *m.EVERYWHERE.values()]
    assert all(callable(getattr(m, "_" + n, None)) for n in names)
    state_names = {cls.__name__ for cls in m.State.__args__}
    assert {s for s, _ in m.TRANSITIONS} <= state_names


def test_every_transition_audits_and_shows():
    for _, state, event, want_state, _, _ in ROWS:
        _, effects = m.step(state, event)
        if want_state != state and not isinstance(event, (JobArrived, JobPrinted, JobGone, Released)):
            assert any(isinstance(e, Audit) for e in effects), (state, event)
            assert any(isinstance(e, ShowPanel) for e in effects), (state, event)


def test_pin_never_shown():
    pin = Pin(b"918273")
    state = m.AwaitingPin(AUTHING.s, "alice", 201.0, b"secret-challenge")
    nxt, effects = m.step(state, PinEntered(205.0, 1, pin))
    text = repr(nxt) + repr(effects) + repr(PinEntered(205.0, 1, pin)) + str(pin)
    assert "918273" not in text and "secret-challenge" not in text
    assert effects[0].pin.reveal() == b"918273" and effects[0].state == b"secret-challenge"
    assert "secret-challenge" not in repr(state)


def test_card_uid_is_masked_in_the_journal():
    _, effects = m.step(m.Idle(0), TAP_ALICE)
    text = repr(effects)
    assert "04A1B2C3D4E5F6" not in text and "A1B2C3" not in text
    assert [e.fields["card"] for e in effects if isinstance(e, Audit)] == ["…E5F6"]


def test_unknown_events_are_ignored_not_fatal():
    for state in [m.Starting(), m.Idle(0), *ORG_BEARING_STATES, m.Fault(1), m.Stopped(1, True)]:
        nxt, effects = m.step(state, object())
        assert nxt == state and core(effects) == []


def test_a_bug_in_a_handler_fails_closed(monkeypatch):
    def broken(state, event, limits):
        raise KeyError("boom")
    monkeypatch.setattr(m, "_tap_ready", broken)
    nxt, effects = m.step(m.Ready(S), TAP_ALICE)
    assert isinstance(nxt, m.Purging) and core(effects) == [Purge(1, "internal error")]
    assert any(isinstance(e, Audit) and e.event == "machine-error" for e in effects)


def test_limits_come_from_the_caller():
    state = m.AwaitingPin(AUTHING.s, "alice", 201.0)
    nxt, _ = m.step(state, Tick(211.0), m.Limits(pin_timeout_s=10))
    assert nxt == m.Ready(AUTHING.s)


def test_panel_lines_are_short_and_total():
    assert all(len(panel.text(k, org="x" * 64, user="y" * 64, count=99, message="z" * 200))
               <= panel.MAX_LEN for k in panel.MESSAGES)
    assert panel.text("no-such-key") == "Please wait"
    assert panel.text("in-use") == panel.MESSAGES["in-use"]  # a missing field never raises
    assert panel.mask_tag("") == "…"


def test_combined_a_new_authentication_revokes_the_earlier_yes():
    """Alice was accepted; Bob taps and is rejected: Alice's next job is held, not released."""
    state = m.Ready(AUTHED_C)
    for event in [CardTapped(201.0, "bob", "acme", "04BB"), AuthRejected(202.0, 1, 2, "bob", "no")]:
        state, _ = m.step(state, event)
    state, effects = m.step(state, JobArrived(203.0, 1, 9, "alice", "10.20.0.50", "ok"))
    assert isinstance(state, m.Ready) and state.s.authed_user is None
    assert core(effects) == [] and [j.job_id for j in state.s.held] == [9]


def test_a_pin_is_asked_for_only_until_its_timeout_even_before_the_tick_that_ends_the_wait():
    state = m.AwaitingPin(AUTHING.s, "alice", 201.0)
    limits = m.Limits(pin_timeout_s=10)
    assert m.pin_open(state, 210.9, limits)
    assert not m.pin_open(state, 211.0, limits)  # the Tick of 211.5 has not come yet: nobody would take it
    assert not m.pin_open(m.Ready(AUTHING.s), 205.0, limits)
