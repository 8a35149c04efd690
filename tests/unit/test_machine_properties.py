"""Properties of the session state machine over arbitrary event sequences (hypothesis).

A sequence is a list of abstract steps; each becomes a concrete event against the current state, so
answers usually carry the current session/attempt (and sometimes a neighbouring, stale one). The
harness tracks what it fed, independently of the machine's internals, and checks:

(a) a TunnelDown of the session in an org-bearing state yields a Purge before any later
    FetchProfile or BringUpTunnel;
(b) sessions never overlap: between two BringUpTunnel effects there is always a Purge;
(c) ReleaseJobs names only jobs of the user the last effective AuthAccepted accepted (and no
    authentication started since), in the current session, that arrived (as that user's, with an
    owner proof that verified) from inside the negotiated remote TS;
(d) the transition function never raises, in any state, on any event;
(e) after Fault, no FetchProfile until FaultCleared;
(f) a job deleted from the panel (ReportJobs "deleted", PurgeJob "deleted by its owner") is one
    of the jobs of the user the last effective AuthAccepted accepted, as (c);
and also: Idle is reached from a loaded session only through a purge; no PIN or full card UID
appears in any state or effect repr.
"""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware import machine as m
from firmware.effects import (Audit, Authenticate, BringUpTunnel, FetchProfile, Purge, PurgeJob, ReleaseJobs,
                              ReportJobs, ShowPanel)
from firmware.events import (AuthAccepted, AuthPinRequired, AuthRejected, AuthUnavailable, Boot,
                             CardTapped, CardUnreadable, ChooseNext, FaultCleared, JobArrived,
                             JobGone, JobPrinted, JobsChosen, JobsDeleted, LoggedOut, LookupFailed, Pin, PinCancelled, PinEntered, Policy,
                             PrintServiceFailed, PrintServiceUp, ProfileFetched, PurgeDone,
                             ReleaseFailed, Released, Shutdown, Tick, TunnelDown, TunnelFailed,
                             TunnelUp)

PIN = "918273"
UID = "04A1B2C3D4E5F6"
ORGS = ["acme", "globex"]
USERS = ["alice", "bob", "carol"]
IPS = ["10.20.0.50", "10.20.0.200", "10.99.0.1", "bogus", "fd00::1", "10.20.0.130"]
TS = [("10.20.0.0/24",), ("10.20.0.0/25",), ("0.0.0.0/0",), ("junk",), ("10.20.0.0/24", "fd00::/64")]
POLICIES = [Policy(), Policy(combined_mode=True), Policy(idle_timeout_s=10, max_hold_s=20),
            Policy(idle_timeout_s=10, max_hold_s=20, combined_mode=True)]
# "next" first (hypothesis favours the first and last items) and most: sequences get deep
KINDS = ["next", "boot", "tick", "tap", "tap", "tap", "unreadable", "fault_cleared", "profile",
         "profile", "lookup_failed", "tunnel_up", "tunnel_up", "tunnel_failed", "tunnel_down",
         "ps_up", "ps_up", "ps_failed", "accepted", "accepted", "rejected", "pin_required",
         "unavailable", "pin", "pin_cancelled", "released", "release_failed", "job", "job", "job",
         "printed", "gone", "purge_ok", "shutdown", "purge_failed", "junk", "choose_next", "chosen",
         "chosen_all", "deleted", "logged_out", *["next"] * 100]

# "next": the answer the state is waiting for (so that sequences get deep into sessions)
EXPECTED = {"Starting": ["boot"], "Purging": ["purge_ok", "purge_ok", "purge_ok", "purge_failed"],
            "Idle": ["tap"], "LookingUp": ["profile"],
            "Connecting": ["tunnel_up"], "StartingPrintService": ["ps_up"],
            "Ready": ["job_in", "job_in", "tap_same", "tick", "tap", "choose_next", "chosen", "chosen_all",
                      "deleted", "logged_out"],
            "Switching": ["profile_next", "lookup_failed_next", "job_in"],
            "Authenticating": ["accepted", "accepted", "pin_required"],
            "AwaitingPin": ["pin"], "Releasing": ["released"], "Fault": ["tap", "fault_cleared"],
            "Stopped": ["tick"]}

step_strategy = st.tuples(
    st.sampled_from(KINDS),
    st.sampled_from([0.0, 0.5, 1.0, 5.0, 40.0, 200.0]),   # time advance
    st.sampled_from([0, 0, 0, 0, -1, 1]),                  # session offset: mostly current
    st.sampled_from([0, 0, 0, -1]),                        # attempt offset
    st.integers(0, len(ORGS) - 1), st.integers(0, len(USERS) - 1), st.integers(0, len(IPS) - 1),
    st.integers(1, 6),                                     # job id (collisions on purpose)
    st.integers(0, len(TS) - 1), st.integers(0, len(POLICIES) - 1),
)


def concrete(state, at, kind, ds, da, o, u, ip, job, ts, pol):
    """The event an abstract step means in `state`."""
    if kind == "next":
        options = EXPECTED[type(state).__name__]
        kind = options[job % len(options)]
        ts = ts % 2 if kind == "tunnel_up" else ts
        ds, da = 0, 0
    n = state.session + ds
    a = (state.s.attempt if isinstance(state, m._InSession) else 1) + da
    org, user = ORGS[o], USERS[u]
    held = [j.job_id for j in state.s.held] if isinstance(state, m._InSession) else [job]
    return {
        "boot": lambda: Boot(at), "tick": lambda: Tick(at), "shutdown": lambda: Shutdown(at),
        "tap": lambda: CardTapped(at, user, org, UID),
        "unreadable": lambda: CardUnreadable(at, "read-error"),
        "fault_cleared": lambda: FaultCleared(at),
        "profile": lambda: ProfileFetched(at, n, getattr(state, "org", org), TS[ts], POLICIES[pol]),
        "profile_next": lambda: ProfileFetched(at, state.to.session, state.to.org, TS[ts], POLICIES[pol]),
        "lookup_failed_next": lambda: LookupFailed(at, state.to.session, "refused"),
        "lookup_failed": lambda: LookupFailed(at, n, "refused"),
        "tunnel_up": lambda: TunnelUp(at, n, IPS[ip], TS[ts]),
        "tunnel_failed": lambda: TunnelFailed(at, n), "tunnel_down": lambda: TunnelDown(at, n),
        "ps_up": lambda: PrintServiceUp(at, n), "ps_failed": lambda: PrintServiceFailed(at, n),
        "accepted": lambda: AuthAccepted(at, n, a, getattr(state, "user", user) if ds == 0 or u
                                         else user),
        "rejected": lambda: AuthRejected(at, n, a, user, "no"),
        "pin_required": lambda: AuthPinRequired(at, n, a, getattr(state, "user", user), b"ch", "PIN"),
        "unavailable": lambda: AuthUnavailable(at, n, a),
        "pin": lambda: PinEntered(at, n, Pin(PIN.encode())), "pin_cancelled": lambda: PinCancelled(at, n),
        "released": lambda: Released(at, n, tuple(getattr(state, "job_ids", held))),
        "release_failed": lambda: ReleaseFailed(at, n, tuple(held)),
        "job": lambda: JobArrived(at, n, job, user, IPS[ip], "ok" if ip % 3 else "missing"),
        "job_in": lambda: JobArrived(at, n, job, user, IPS[ip % 2], "ok" if ip % 3 else "bad signature"),
        "tap_same": lambda: CardTapped(at, user, state.s.org, UID),
        "printed": lambda: JobPrinted(at, n, held[0] if held else job),
        "gone": lambda: JobGone(at, n, job),
        "purge_ok": lambda: PurgeDone(at, n, True),
        "purge_failed": lambda: PurgeDone(at, n, False, ("tmpfs",)),
        "junk": lambda: ProfileFetched(at, n, org, None, "not a policy"),  # type: ignore[arg-type]
        "choose_next": lambda: ChooseNext(at, n),
        "chosen": lambda: JobsChosen(at, n, (job, job % 3 + 1)),   # anyone's ids: the machine picks
        "chosen_all": lambda: JobsChosen(at, n, None),
        "deleted": lambda: JobsDeleted(at, n, (job, 1, 2)),
        "logged_out": lambda: LoggedOut(at, n),
    }[kind]()


def networks(texts):
    try:
        return tuple(ipaddress.ip_network(t, strict=False) for t in texts)
    except (TypeError, ValueError):
        return ()


def inside(ip, nets):
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr.version == n.version and addr in n for n in nets)


class Harness:
    """Feeds events and checks the properties, from what it fed and what came out."""

    def __init__(self):
        self.state = m.initial()
        self.at = 0.0
        self.purge_owed = False          # (a)
        self.tunnel_without_purge = False  # (b)
        self.profile_ts = {}             # session -> networks of the profile
        self.tunnel_ts = {}              # session -> negotiated networks kept
        self.accepted = {}               # session -> user accepted since the last Authenticate
        self.arrivals = {}               # (session, job) -> users whose arrival was inside the TS
        self.latched = False             # (e)
        self.trace = []

    def feed(self, event):
        pre = self.state
        post, effects = m._step(pre, event, m.LIMITS)     # (d): the unguarded function
        self.trace.append((type(pre).__name__, event, [e for e in effects
                                                       if not isinstance(e, (Audit, ShowPanel))]))
        self.observe(pre, event, post, effects)
        self.state = post

    def observe(self, pre, ev, post, effects):
        current = getattr(ev, "session", pre.session) == pre.session
        if isinstance(ev, TunnelDown) and current and isinstance(pre, m.ORG_BEARING):
            assert any(isinstance(e, Purge) for e in effects), self.trace   # (a), immediately
            self.purge_owed = True
        if isinstance(ev, ProfileFetched) and current and isinstance(pre, m.LookingUp):
            self.profile_ts[pre.session] = networks(ev.remote_ts)
        if isinstance(ev, ProfileFetched) and isinstance(pre, m.Switching) and ev.session == pre.to.session:
            self.profile_ts[ev.session] = networks(ev.remote_ts)
        if isinstance(ev, TunnelUp) and current and isinstance(pre, m.Connecting):
            allowed = self.profile_ts.get(pre.session, ())
            self.tunnel_ts[pre.session] = tuple(
                n for n in networks(ev.remote_ts)
                if any(n.version == p.version and n.subnet_of(p) for p in allowed))
        if (isinstance(ev, AuthAccepted) and current and isinstance(pre, m.Authenticating)
                and ev.attempt == pre.s.attempt and ev.user == pre.user):
            self.accepted[pre.session] = ev.user
        if isinstance(ev, JobArrived) and current and ev.proof == "ok" and inside(
                ev.origin_ip, self.tunnel_ts.get(pre.session, ())):
            self.arrivals.setdefault((pre.session, ev.job_id), set()).add(ev.user)
        if isinstance(ev, FaultCleared) and isinstance(pre, m.Fault):
            self.latched = False

        for e in effects:
            if isinstance(e, Authenticate):  # a new authentication revokes the earlier yes
                self.accepted.pop(e.session, None)
            if isinstance(e, Purge):
                self.purge_owed = False
                self.tunnel_without_purge = False
            if isinstance(e, (FetchProfile, BringUpTunnel)):
                assert not self.purge_owed, self.trace                     # (a)
            if isinstance(e, FetchProfile):
                assert not self.latched, self.trace                        # (e)
            if isinstance(e, BringUpTunnel):
                assert not self.tunnel_without_purge, self.trace           # (b)
                self.tunnel_without_purge = True
            if isinstance(e, ReleaseJobs):                                 # (c)
                assert e.session == pre.session == post.session, self.trace
                assert e.job_ids and self.accepted.get(e.session) == e.user, self.trace
                for job in e.job_ids:
                    assert e.user in self.arrivals.get((e.session, job), ()), self.trace
            deleted = ((isinstance(e, ReportJobs) and e.state == "deleted")
                       or (isinstance(e, PurgeJob) and e.reason == "deleted by its owner"))
            if deleted:                                                    # (f)
                user = self.accepted.get(e.session)
                assert user is not None and e.session == pre.session, self.trace
                for job in getattr(e, "job_ids", None) or (e.job_id,):
                    assert user in self.arrivals.get((e.session, job), ()), self.trace

        if isinstance(post, m.Fault):
            self.latched = True
        loaded = (m.Connecting, m.StartingPrintService, m.Ready, m.Switching, m.Authenticating,
                  m.AwaitingPin, m.Releasing)
        if isinstance(pre, loaded):
            assert not isinstance(post, (m.Idle, m.LookingUp)), self.trace  # only through a purge
        text = repr(post) + repr(effects)
        assert PIN not in text and UID[2:] not in text, self.trace


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step_strategy, min_size=10, max_size=80))
def test_properties_hold_for_every_sequence(steps):
    h = Harness()
    for kind, dt, *rest in steps:
        h.at += dt
        h.feed(concrete(h.state, h.at, kind, *rest))


@settings(max_examples=200, deadline=None)
@given(st.lists(step_strategy, max_size=60))
def test_a_boot_then_two_taps_reaches_a_session(steps):
    """Sanity check for the generator: from boot, the happy path prefix reaches Ready, and the
    properties still hold whatever follows."""
    h = Harness()
    for ev in [Boot(0.0), PurgeDone(0.1, 0, True), CardTapped(1.0, "alice", "acme", UID),
               ProfileFetched(1.1, 1, "acme", ("10.20.0.0/24",), Policy()),
               TunnelUp(1.2, 1, "10.20.0.200", ("10.20.0.0/24",)), PrintServiceUp(1.3, 1),
               JobArrived(1.4, 1, 1, "alice", "10.20.0.50", "ok")]:
        h.feed(ev)
    assert isinstance(h.state, m.Ready) and len(h.state.s.held) == 1
    h.at = 2.0
    for kind, dt, *rest in steps:
        h.at += dt
        h.feed(concrete(h.state, h.at, kind, *rest))


def test_seeded_walks_reach_every_state_and_release():
    """Guard against a vacuous property run, and more steps than hypothesis takes: fixed-seed
    walks visit every state class and release jobs many times, under the same checks."""
    import random
    rng = random.Random(7)
    seen, releases, deletions, chosen = set(), 0, 0, 0
    for _ in range(400):
        h = Harness()
        for _ in range(80):
            h.at += rng.choice([0.0, 1.0, 5.0, 40.0, 200.0])
            kind = rng.choice(KINDS)
            rest = (rng.choice([0, 0, 0, -1, 1]), rng.choice([0, 0, -1]), rng.randrange(len(ORGS)),
                    rng.randrange(len(USERS)), rng.randrange(len(IPS)), rng.randint(1, 6),
                    rng.randrange(len(TS)), rng.randrange(len(POLICIES)))
            h.feed(concrete(h.state, h.at, kind, *rest))
            seen.add(type(h.state).__name__)
        releases += sum(isinstance(e, ReleaseJobs) for _, _, effects in h.trace for e in effects)
        deletions += sum(isinstance(e, ReportJobs) and e.state == "deleted"
                         for _, _, effects in h.trace for e in effects)
        chosen += sum(isinstance(ev, JobsChosen) and any(isinstance(e, ReleaseJobs) for e in effects)
                      for _, ev, effects in h.trace)
    assert seen == {cls.__name__ for cls in m.State.__args__}
    assert releases >= 100
    assert chosen >= 1, chosen  # the panel's paths are walked too (deletions: the test below)


PANEL_KINDS = ["chosen", "chosen_all", "deleted", "logged_out", "choose_next", "tap_same", "job_in",
               "tick", "released", "accepted", "next"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(PANEL_KINDS), st.sampled_from([0.0, 1.0, 5.0, 40.0]),
                          st.sampled_from([0, 0, 0, 1]), st.integers(0, len(USERS) - 1),
                          st.integers(1, 6)), max_size=40))
def test_the_panel_acts_only_on_the_logged_in_persons_jobs(steps):
    """A person logged in at the panel (ChooseNext, then their accepted tap) with jobs of several
    users held: whatever the panel sends (anyone's job ids, stale sessions, after the log-in
    expired), releases and deletions stay within (c) and (f)."""
    h = Harness()
    for ev in [Boot(0.0), PurgeDone(0.1, 0, True), CardTapped(1.0, "alice", "acme", UID),
               ProfileFetched(1.1, 1, "acme", ("10.20.0.0/24",), Policy()),
               TunnelUp(1.2, 1, "10.20.0.200", ("10.20.0.0/24",)), PrintServiceUp(1.3, 1),
               JobArrived(1.4, 1, 1, "alice", "10.20.0.50", "ok"), JobArrived(1.5, 1, 2, "alice", "10.20.0.50", "ok"),
               JobArrived(1.6, 1, 3, "bob", "10.20.0.50", "ok"), ChooseNext(2.0, 1),
               CardTapped(2.1, "alice", "acme", UID)]:
        h.feed(ev)
    h.feed(AuthAccepted(2.2, 1, h.state.s.attempt, "alice"))
    assert isinstance(h.state, m.Ready) and h.state.s.panel_user == "alice" and len(h.state.s.held) == 3
    h.at = 3.0
    for kind, dt, ds, u, job in steps:
        h.at += dt
        h.feed(concrete(h.state, h.at, kind, ds, 0, 0, u, 0, job, 0, 0))


def test_a_deletion_from_the_panel_reports_and_cancels_the_persons_own_jobs_only():
    h = Harness()
    for ev in [Boot(0.0), PurgeDone(0.1, 0, True), CardTapped(1.0, "alice", "acme", UID),
               ProfileFetched(1.1, 1, "acme", ("10.20.0.0/24",), Policy()),
               TunnelUp(1.2, 1, "10.20.0.200", ("10.20.0.0/24",)), PrintServiceUp(1.3, 1),
               JobArrived(1.4, 1, 1, "alice", "10.20.0.50", "ok"), JobArrived(1.5, 1, 3, "bob", "10.20.0.50", "ok"),
               ChooseNext(2.0, 1), CardTapped(2.1, "alice", "acme", UID)]:
        h.feed(ev)
    h.feed(AuthAccepted(2.2, 1, h.state.s.attempt, "alice"))
    h.feed(JobsDeleted(3.0, 1, (1, 3)))
    effects = h.trace[-1][2]
    assert ReportJobs(1, "deleted", (1,)) in effects and PurgeJob(1, 1, "deleted by its owner") in effects
    assert not any(getattr(e, "job_id", None) == 3 or 3 in getattr(e, "job_ids", ()) for e in effects)
    assert [j.job_id for j in h.state.s.held] == [3]
    h.feed(JobsDeleted(3.0 + m.LIMITS.panel_return_s + 1, 1, (3,)))  # logged out by time: nothing
    assert [j.job_id for j in h.state.s.held] == [3] and not h.trace[-1][2]
