"""The session state machine: everything that affects transitions lives in this file.

`step(state, event) -> (state, effects)` is pure: no I/O, no clock (time comes in as `event.at`),
no hal imports. The runtime executes the effects (`firmware.effects`) in order and feeds their
results back as events (`firmware.events`). Secrets never enter: the machine sees org ids, traffic
selectors and policy; the runtime keeps the `SessionProfile` for the current `session` number.

Invariants (tested in tests/unit/test_machine_properties.py):
- Purge is a property of states, not of paths: every org-bearing state answers `TunnelDown` (and
  `Shutdown`) of its session with `Purge`, whatever led there.
- A new session's tunnel (`BringUpTunnel`) starts only from `Idle` or right after a verified
  purge; `Idle` is reached from a session only through a verified purge. A failed purge latches
  `Fault` until `FaultCleared`.
- Another org's tap costs the serving session nothing until it is real: that org is looked up
  first (`Switching`), and only once its profile arrived is the serving session purged.
- `ReleaseJobs` names only held jobs of the user the auth server accepted in this session, and a
  job is held only if it came from inside the tunnel's remote traffic selectors.
- Answers carrying an old `session` (or `attempt`) are dropped; unknown events are ignored.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

from firmware import panel
from firmware.effects import (AskPin, Audit, Authenticate, BringUpTunnel, EndLookup, FetchProfile,
                              PinAccepted, PinFailed, PreparePrintService, Purge, PurgeJob, ReleaseJobs,
                              ReportJobs, ShowPanel, StartPrintService, StartSpareKeeper)
from firmware.events import (AuthAccepted, AuthPinRequired, AuthRejected, AuthUnavailable, Boot,
                             CardTapped, CardUnreadable, ChooseNext, FaultCleared, JobArrived,
                             JobGone, JobPrinted, JobsChosen, JobsDeleted, LoggedOut, LookupFailed, PinCancelled, PinEntered, Policy,
                             PrintServiceFailed, PrintServiceUp, ProfileFetched, PurgeDone,
                             ReleaseFailed, Released, Shutdown, Tick, TunnelDown, TunnelFailed,
                             TunnelUp)

# -- the transitions ------------------------------------------------------------------------------
# (state, event) -> handler. Looked up in this order: TRANSITIONS, then IN_SESSION for every
# org-bearing state, then EVERYWHERE; anything else is ignored (and audited, except Tick).

TRANSITIONS = {
    ("Starting", Boot): "boot_purge",                       # leftovers of a crash
    ("Starting", CardTapped): "tap_wait",
    ("Starting", Shutdown): "shutdown",
    ("Purging", PurgeDone): "purge_done",                   # -> Idle | next tap's lookup | Fault | Stopped
    ("Purging", Tick): "purge_tick",                        # no answer in time -> Fault
    ("Purging", Shutdown): "purge_then_stop",
    ("Purging", CardTapped): "tap_wait",
    ("Idle", CardTapped): "lookup",                         # -> LookingUp: FetchProfile
    ("Idle", Shutdown): "shutdown",
    ("LookingUp", ProfileFetched): "connect",               # -> Connecting: BringUpTunnel
    ("LookingUp", LookupFailed): "lookup_failed",           # the print service started -> Purging
    ("Connecting", TunnelUp): "start_print_service",        # -> StartingPrintService
    ("Connecting", TunnelFailed): "tunnel_failed",          # charon may hold credentials -> Purging
    ("StartingPrintService", PrintServiceUp): "serve",      # -> Ready (combined: Authenticating)
    ("StartingPrintService", PrintServiceFailed): "print_service_failed",
    ("Ready", CardTapped): "tap_ready",                     # same org: auth; other org: look up or refuse
    ("Switching", Tick): "switching_tick",                  # idle/max hold of the serving session
    ("Ready", Tick): "ready_tick",                          # idle timeout, max hold, panel log-out
    ("Ready", ChooseNext): "choose_next",                   # the next tap shows the person's jobs
    ("Ready", JobsChosen): "jobs_chosen",                   # the panel's person prints some or all
    ("Ready", JobsDeleted): "jobs_deleted",                 # ... or deletes some of their own
    ("Ready", LoggedOut): "logged_out",
    ("Authenticating", AuthAccepted): "accepted",           # -> Releasing | Ready
    ("Authenticating", AuthRejected): "rejected",
    ("Authenticating", AuthPinRequired): "ask_pin",         # -> AwaitingPin
    ("Authenticating", AuthUnavailable): "unavailable",
    ("AwaitingPin", PinEntered): "pin_entered",             # -> Authenticating with pin + challenge
    ("AwaitingPin", PinCancelled): "pin_cancelled",
    ("AwaitingPin", Tick): "pin_tick",                      # PIN timeout, max hold
    ("Releasing", Released): "released",
    ("Releasing", ReleaseFailed): "release_failed",
    ("Fault", CardTapped): "refuse_tap",                    # latched
    ("Fault", FaultCleared): "clear_fault",                 # -> Purging again
    ("Fault", Shutdown): "shutdown",
}

IN_SESSION = {  # every org-bearing state, whatever path led there
    TunnelDown: "tunnel_down",
    Shutdown: "shutdown",
    Tick: "step_tick",
    CardTapped: "tap_busy",
    JobArrived: "job_arrived",
    JobPrinted: "job_done",
    JobGone: "job_done",
    Released: "released_late",
}

EVERYWHERE = {CardUnreadable: "card_unreadable"}


@dataclass(frozen=True)
class Limits:
    """Device-side timeouts (the org's policy comes with the profile)."""
    pin_timeout_s: float = 30.0
    panel_return_s: float = 30.0    # the panel's person is logged out after this without a touch
    choose_armed_s: float = 30.0    # "Choose my jobs" waits this long for the tap
    step_timeout_s: float = 120.0   # an effect's answer that never comes
    purge_timeout_s: float = 120.0


# -- states ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HeldJob:
    job_id: int
    user: str
    origin_ip: str
    arrived_at: float


@dataclass(frozen=True)
class Session:
    """The non-secret facts of one org's session."""
    number: int
    org: str
    opener: str                      # the user whose tap opened it
    policy: Policy
    remote_ts: tuple                 # ipaddress networks
    opener_locked: bool = False      # the device's PIN lockout held the opener at that tap
    opener_proof: str = field(default="", repr=False)  # the opening tap's card proof, until used once
    device_networks: tuple = ()      # the device's own networks when the profile arrived
    issued: int = 0                  # the highest session number a lookup made while serving had
    virtual_ip: str = ""
    held: tuple[HeldJob, ...] = ()
    printing: tuple[int, ...] = ()   # released, in the engine spool, not yet ended at the engine
    authed_user: str | None = None   # accepted in this session, until the next authentication
    attempt: int = 0                 # numbers Authenticate effects; answers must match
    last_activity: float = 0.0
    panel_user: str | None = None    # the person logged in at the panel (accepted by a tap), ...
    panel_since: float = 0.0         # ... since their last touch
    choose_armed_at: float | None = None  # "Choose my jobs": the next accepted tap lists, not prints


@dataclass(frozen=True)
class Starting:
    session: int = 0


@dataclass(frozen=True)
class Idle:
    session: int


@dataclass(frozen=True)
class LookingUp:
    session: int
    org: str
    user: str
    since: float
    opener_locked: bool = False  # the opener's PIN is locked (combined mode must not authenticate them)
    proof: str = field(default="", repr=False)  # the tap's card proof (one-time: forwarded once)


class _InSession:
    s: Session

    @property
    def session(self) -> int:
        return self.s.number


@dataclass(frozen=True)
class Connecting(_InSession):
    s: Session
    since: float


@dataclass(frozen=True)
class StartingPrintService(_InSession):
    s: Session
    since: float


@dataclass(frozen=True)
class Ready(_InSession):
    s: Session


@dataclass(frozen=True)
class Authenticating(_InSession):
    s: Session
    user: str
    since: float
    with_pin: bool = False


@dataclass(frozen=True)
class AwaitingPin(_InSession):
    s: Session
    user: str
    asked_at: float
    challenge: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class Switching(_InSession):
    """Still serving `s` while another org (`to`) is looked up; its answers carry `to.session`."""
    s: Session
    to: LookingUp


@dataclass(frozen=True)
class Releasing(_InSession):
    s: Session
    user: str
    job_ids: tuple[int, ...]
    since: float


@dataclass(frozen=True)
class Purging:
    session: int
    org: str | None
    reason: str
    since: float
    notice: str = ""                     # the outcome to show once purged
    notice_key: str = field(default="", compare=False)  # its panel key (shown without the org once purged)
    then: CardTapped | None = None       # a tap from another org, served after the purge
    stop: bool = False                   # shutting down: Stopped after the purge
    switch_to: tuple | None = None       # (LookingUp, ProfileFetched): the org to connect after the purge
    issued: int = 0                      # the highest session number used so far (the next is above)


@dataclass(frozen=True)
class Fault:
    session: int
    leftovers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stopped:
    session: int
    clean: bool
    leftovers: tuple[str, ...] = ()


State = (Starting | Idle | LookingUp | Connecting | StartingPrintService | Ready | Switching
         | Authenticating | AwaitingPin | Releasing | Purging | Fault | Stopped)
ORG_BEARING = (LookingUp, Connecting, StartingPrintService, Ready, Switching, Authenticating,
               AwaitingPin, Releasing)
SERVING = (StartingPrintService, Ready, Switching, Authenticating, AwaitingPin, Releasing)  # may hold jobs
LIMITS = Limits()


def initial() -> Starting:
    return Starting()


def pin_open(state: State, at: float, limits: Limits = LIMITS) -> bool:
    """Whether a PIN typed at `at` is still asked for: the machine waits for one and its timeout has
    not passed (the Tick that ends the wait may come up to a tick later; a PIN typed in between
    would be taken by nobody)."""
    return isinstance(state, AwaitingPin) and at - state.asked_at < limits.pin_timeout_s


def step(state: State, event: object, limits: Limits = LIMITS) -> tuple[State, list]:
    """The next state and the effects to run, in order. Never raises: a bug fails closed."""
    try:
        return _step(state, event, limits)
    except Exception as exc:  # fail closed: end the session rather than crash the daemon
        audit = Audit("machine-error", {"state": type(state).__name__,
                                        "event": type(event).__name__, "error": type(exc).__name__})
        if isinstance(state, ORG_BEARING):
            nxt, effects = _purge(state, _at(event), "internal error", "internal-error")
            return nxt, [audit, *effects]
        if isinstance(state, Purging):
            return Fault(state.session, ("purge state unknown",)), [audit, _show("fault")]
        return state, [audit]


def _step(state: State, event: object, limits: Limits) -> tuple[State, list]:
    number = getattr(event, "session", None)
    if isinstance(state, Switching) and number is not None and number == state.to.session:
        if isinstance(event, ProfileFetched):
            return _switch_fetched(state, event, limits)
        if isinstance(event, LookupFailed):
            return _switch_failed(state, event, limits)
    stale = number is not None and number != state.session
    attempt = getattr(event, "attempt", None)
    if attempt is not None and isinstance(state, _InSession) and attempt != state.s.attempt:
        stale = True
    if stale:
        return state, [Audit("stale-event", {"event": type(event).__name__, "session": number,
                                             "current": state.session})]
    name = TRANSITIONS.get((type(state).__name__, type(event)))
    if name is None and isinstance(state, ORG_BEARING):
        name = IN_SESSION.get(type(event))
    if name is None:
        name = EVERYWHERE.get(type(event))
    if name is None:
        if isinstance(event, Tick):
            return state, []
        return state, [Audit("ignored-event", {"state": type(state).__name__,
                                               "event": type(event).__name__})]
    return globals()["_" + name](state, event, limits)


# -- helpers --------------------------------------------------------------------------------------

def _at(event: object) -> float:
    at = getattr(event, "at", 0.0)
    return at if isinstance(at, (int, float)) else 0.0


def _show(key: str, **fields: object) -> ShowPanel:
    return ShowPanel(panel.text(key, **fields), key, tuple(fields.items()))


def _org(state: State) -> str | None:
    return state.s.org if isinstance(state, _InSession) else getattr(state, "org", None)


def _purge(state: State, at: float, reason: str, notice_key: str, *, then: CardTapped | None = None,
           stop: bool = False, number: int | None = None, switch_to: tuple | None = None) -> tuple[State, list]:
    org = _org(state)
    number = state.session if number is None else number
    notice = panel.text(notice_key, org=org or "")
    shown = ShowPanel(notice, notice_key, (("org", org or ""),))
    if isinstance(state, Switching) and then is None and switch_to is None and not stop:
        then = _remembered_tap(state.to)  # the other org's tap is served once this purge is done
    issued = state.s.issued if isinstance(state, _InSession) else 0
    nxt = Purging(number, org, reason, at, notice=notice, notice_key=notice_key, then=then, stop=stop,
                  switch_to=switch_to, issued=issued)
    return nxt, [Purge(number, reason, keep_next=switch_to is not None), shown,
                 Audit("purge", {"session": number, "org": org, "reason": reason})]


def _networks(texts: object) -> tuple:
    """Parse traffic selectors; anything unparsable yields an empty tuple (fail closed)."""
    try:
        return tuple(ipaddress.ip_network(t, strict=False) for t in texts)
    except (TypeError, ValueError):
        return ()


def _address(ip: object):
    try:
        return ipaddress.ip_address(ip)
    except (TypeError, ValueError):
        return None


def _inside(ip: object, networks: tuple) -> bool:
    addr = _address(ip)
    return addr is not None and any(addr.version == n.version and addr in n for n in networks)


def _jobs_of(s: Session, user: str) -> tuple[int, ...]:
    jobs = sorted((j for j in s.held if j.user == user), key=lambda j: (j.arrived_at, j.job_id))
    return tuple(j.job_id for j in jobs)


def _expired(s: Session, at: float, *, idle: bool) -> tuple[str, str] | None:
    """(reason, panel key) when the session must end now."""
    if s.held and at - min(j.arrived_at for j in s.held) >= s.policy.max_hold_s:
        return "max hold", "max-hold"
    if idle and not s.held and not s.printing and at - s.last_activity >= s.policy.idle_timeout_s:
        return "idle timeout", "idle-timeout"
    return None


def _end(state: State, at: float, ended: tuple[str, str]) -> tuple[State, list]:
    """End the session for `ended` (from `_expired`): at max hold its held jobs are reported expired
    first (while the tunnel still carries the report), so the desks cancel them instead of
    delivering them again."""
    nxt, effects = _purge(state, at, *ended)
    held = tuple(j.job_id for j in state.s.held)
    if ended[0] == "max hold" and held:
        effects = [ReportJobs(state.s.number, "expired", held), *effects]
    return nxt, effects


def _authenticate(s: Session, user: str, at: float, *, pin=None, challenge=None,
                  proof: str = "") -> tuple[State, list]:
    # whoever taps now is the person at the panel: the one before is logged out
    s = replace(s, attempt=s.attempt + 1, authed_user=None, last_activity=at, panel_user=None)
    return Authenticating(s, user, at, with_pin=pin is not None), [
        Authenticate(s.number, s.attempt, user, s.org, pin=pin, state=challenge, proof=proof),
        _show("authenticating", user=user),
        Audit("authenticate", {"session": s.number, "user": user, "attempt": s.attempt,
                               "pin": pin is not None})]


def _release(s: Session, user: str, job_ids: tuple[int, ...], at: float) -> tuple[State, list]:
    return Releasing(s, user, job_ids, at), [
        ReleaseJobs(s.number, user, job_ids), _show("releasing", count=len(job_ids), user=user),
        Audit("release", {"session": s.number, "user": user, "jobs": list(job_ids)})]


def _back_to_ready(s: Session, key: str, event: str, **fields: object) -> tuple[State, list]:
    return Ready(s), [_show(key, **fields),
                      Audit(event, {"session": s.number, **{k: v for k, v in fields.items()}})]


def _ready_key(s: Session) -> str:
    return "ready-combined" if s.policy.combined_mode else "ready"


# -- handlers (named in the tables above) ---------------------------------------------------------

def _boot_purge(state, event, limits):
    return Purging(state.session, None, "startup", event.at), [
        Purge(state.session, "startup"), _show("starting"), Audit("boot", {})]


def _purge_done(state, event, limits):
    fields = {"session": state.session, "reason": state.reason, "ok": event.ok,
              "leftovers": list(event.leftovers)}
    if state.stop:
        return (Stopped(state.session, event.ok, tuple(event.leftovers)),
                [_show("stopped"), Audit("stopped", fields)])
    if not event.ok:
        return (Fault(max(state.session, state.issued), tuple(event.leftovers)),
                [_show("fault"), Audit("fault", fields)])
    if state.switch_to is not None:
        looking_up, fetched = state.switch_to
        nxt, effects = _connect(replace(looking_up, since=event.at), replace(fetched, at=event.at), limits,
                                prepare=True)
        return nxt, [Audit("purged", fields), *effects, StartSpareKeeper()]
    idle = Idle(max(state.session, state.issued))
    if state.then is not None:
        # the tap's lookup first: it takes the spare keeper if there is one, and the next one
        # starts after it
        nxt, effects = _lookup(idle, replace(state.then, at=event.at), limits)
        return nxt, [Audit("purged", fields), *effects, StartSpareKeeper()]
    shown = ShowPanel(state.notice, state.notice_key) if state.notice else _show("idle")
    return idle, [shown, Audit("purged", fields), StartSpareKeeper()]


def _purge_tick(state, event, limits):
    if event.at - state.since < limits.purge_timeout_s:
        return state, []
    return _purge_done(state, PurgeDone(event.at, state.session, False, ("purge did not answer",)),
                       limits)


def _purge_then_stop(state, event, limits):
    return replace(state, stop=True, then=None), [Audit("shutdown", {"session": state.session}), _show("purging")]


def _shutdown(state, event, limits):
    number = state.session + 1 if isinstance(state, Fault) else None
    return _purge(state, event.at, "shutdown", "purging", stop=True, number=number)


def _lookup(state, event, limits):
    number = state.session + 1
    return LookingUp(number, event.org, event.user, event.at, event.pin_locked, event.proof), [
        FetchProfile(number, event.org), PreparePrintService(number), _show("looking-up", org=event.org),
        Audit("tap", {"session": number, "org": event.org, "user": event.user,
                      "card": panel.mask_tag(event.uid_tag)})]


def _remembered_tap(to: LookingUp) -> CardTapped:
    return CardTapped(to.since, to.user, to.org, pin_locked=to.opener_locked, proof=to.proof)


def _lookup_failed(state, event, limits):
    # The print service started beside the lookup: purged like any session start that failed.
    nxt, effects = _purge(state, event.at, f"lookup {event.kind}", panel.lookup_key(event.kind))
    return nxt, [Audit("lookup-failed", {"session": state.session, "org": state.org, "kind": event.kind}),
                 *effects]


def _profile_fault(state: LookingUp, event: ProfileFetched) -> str | None:
    """Why this profile must not become a session (None when it may)."""
    networks = _networks(event.remote_ts)
    if event.org != state.org or not networks or not isinstance(event.policy, Policy):
        return "invalid profile"
    own = _networks(event.device_networks)
    if len(own) != len(event.device_networks):
        return "device networks unknown"
    for n in networks:
        if n.prefixlen < (8 if n.version == 4 else 32):  # as hal/directory/profile.py: one org's block at most
            return "selector too wide"
        if any(n.version == o.version and n.overlaps(o) for o in own):
            return "selector overlaps the device's networks"
    return None


def _connect(state, event, limits, *, prepare: bool = False):
    fault = _profile_fault(state, event)
    if fault is not None:
        nxt, effects = _purge(state, event.at, fault, "lookup-malformed")
        return nxt, [Audit("profile-refused", {"session": state.session, "org": state.org, "why": fault}),
                     *effects]
    s = Session(state.session, state.org, state.user, event.policy, _networks(event.remote_ts),
                opener_locked=state.opener_locked, opener_proof=state.proof,
                device_networks=_networks(event.device_networks),
                last_activity=event.at)
    first = [PreparePrintService(s.number)] if prepare else []
    return Connecting(s, event.at), [
        BringUpTunnel(s.number, s.org), *first, _show("connecting", org=s.org),
        Audit("profile", {"session": s.number, "org": s.org, "remote_ts": [str(n) for n in s.remote_ts],
                          "combined": event.policy.combined_mode})]


def _start_print_service(state, event, limits):
    s = state.s
    # the negotiated selectors, kept only where the profile allows them
    networks = tuple(n for n in _networks(event.remote_ts)
                     if any(n.version == p.version and n.subnet_of(p) for p in s.remote_ts))
    if not networks:
        return _purge(state, event.at, "tunnel selectors refused", "tunnel-failed")
    why = _virtual_ip_fault(event.virtual_ip, s)
    if why is not None:
        nxt, effects = _purge(state, event.at, "virtual IP refused", "virtual-ip-refused")
        return nxt, [Audit("virtual-ip-refused", {"session": s.number, "org": s.org,
                                                  "virtual_ip": str(event.virtual_ip)[:64], "why": why}),
                     *effects]
    s = replace(s, virtual_ip=event.virtual_ip, remote_ts=networks, last_activity=event.at)
    return StartingPrintService(s, event.at), [
        StartPrintService(s.number, s.virtual_ip), _show("starting-print-service", org=s.org),
        Audit("tunnel-up", {"session": s.number, "org": s.org, "virtual_ip": s.virtual_ip,
                            "remote_ts": [str(n) for n in networks]})]


def _virtual_ip_fault(ip: object, s: Session) -> str | None:
    """Why the address the org's gateway gave must not be the MFP's (None when it may): it must lie
    inside the profile's remote selectors, and never be the device's own, loopback, link-local,
    multicast or unspecified (a gateway handing out a coworker's LAN address would make the MFP
    answer ARP for it on the office LAN)."""
    addr = _address(ip)
    if addr is None:
        return "not an address"
    if addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.is_unspecified or addr.is_reserved:
        return "special address"
    if not _inside(addr, s.remote_ts):
        return "outside the organization's selectors"
    if _inside(addr, s.device_networks):
        return "inside the device's own networks"
    nets = tuple(n for n in s.remote_ts if addr in n and n.version == addr.version)
    if any(n.num_addresses > 2 and addr in (n.network_address, n.broadcast_address) for n in nets):
        return "network or broadcast address"
    return None


def _tunnel_failed(state, event, limits):
    return _purge(state, event.at, "tunnel failed", "tunnel-failed")


def _print_service_failed(state, event, limits):
    return _purge(state, event.at, "print service failed", "print-service-failed")


def _serve(state, event, limits):
    # the opener's card proof is good for one request: the combined-mode one below, or none
    proof, s = state.s.opener_proof, replace(state.s, last_activity=event.at, opener_proof="")
    audit = Audit("ready", {"session": s.number, "org": s.org, "combined": s.policy.combined_mode})
    if s.policy.combined_mode and s.opener_locked:
        return Ready(s), [_show("pin-locked"), audit,
                          Audit("pin-locked", {"session": s.number, "user": s.opener})]
    if s.policy.combined_mode:  # the opening tap also authenticates
        nxt, effects = _authenticate(s, s.opener, event.at, proof=proof)
        return nxt, [audit, *effects]
    return Ready(s), [_show(_ready_key(s), org=s.org), audit]


def _tap_ready(state, event, limits):
    s = state.s
    tap = Audit("tap", {"session": s.number, "org": event.org, "user": event.user,
                        "card": panel.mask_tag(event.uid_tag)})
    if event.org == s.org:
        if event.pin_locked:
            return state, [tap, _show("pin-locked"),
                           Audit("pin-locked", {"session": s.number, "user": event.user})]
        nxt, effects = _authenticate(s, event.user, event.at, proof=event.proof)
        return nxt, [tap, *effects]
    if s.held:
        return state, [_show("in-use", org=s.org),
                       Audit("tap-refused", {"session": s.number, "org": event.org, "held": len(s.held)})]
    # Look the other org up first; this session goes only once that org's profile is in hand.
    number = max(s.number, s.issued) + 1  # never a number an earlier, abandoned lookup had
    to = LookingUp(number, event.org, event.user, event.at, event.pin_locked, event.proof)
    return Switching(replace(s, issued=number), to), [FetchProfile(number, event.org),
                                                      _show("looking-up", org=event.org), tap]


def _switch_fetched(state, event, limits):
    fault = _profile_fault(state.to, event)
    if fault is not None:
        return Ready(state.s), [EndLookup(state.to.session), StartSpareKeeper(), _show(panel.lookup_key("malformed")),
                                Audit("profile-refused", {"session": state.to.session, "org": state.to.org,
                                                          "why": fault})]
    return _purge(state, event.at, "another organization", "switching-org", switch_to=(state.to, event))


def _switch_failed(state, event, limits):
    return Ready(state.s), [EndLookup(state.to.session), StartSpareKeeper(), _show(panel.lookup_key(event.kind)),
                            Audit("lookup-failed", {"session": state.to.session, "org": state.to.org,
                                                    "kind": event.kind})]


def _switching_tick(state, event, limits):
    ended = _expired(state.s, event.at, idle=False)
    if ended:
        return _end(state, event.at, ended)
    if event.at - state.to.since >= limits.step_timeout_s:
        return Ready(state.s), [EndLookup(state.to.session), StartSpareKeeper(), _show(panel.lookup_key("unreachable")),
                                Audit("lookup-failed", {"session": state.to.session, "org": state.to.org,
                                                        "kind": "timeout"})]
    return state, []


def _ready_tick(state, event, limits):
    ended = _expired(state.s, event.at, idle=True)
    if ended:
        return _end(state, event.at, ended)
    s = state.s
    if s.choose_armed_at is not None and not choose_armed(s, event.at, limits):
        s = replace(s, choose_armed_at=None)
    if s.panel_user is not None and not panel_fresh(s, event.at, limits):
        nxt, effects = _logged_out(replace(state, s=s), event, limits)
        return nxt, [effects[0], Audit("panel-timeout", {"session": s.number})]
    return (replace(state, s=s), []) if s is not state.s else (state, [])


def choose_armed(s: Session, at: float, limits: Limits) -> bool:
    """Whether "Choose my jobs" was touched recently enough to apply to a tap answered at `at`."""
    return s.choose_armed_at is not None and at - s.choose_armed_at < limits.choose_armed_s


def panel_fresh(s: Session, at: float, limits: Limits) -> bool:
    """Whether the panel's person (accepted by a tap in this session) is still logged in at `at`."""
    return s.panel_user is not None and at - s.panel_since < limits.panel_return_s


def _choose_next(state, event, limits):
    s = replace(state.s, choose_armed_at=event.at, panel_user=None)
    return Ready(s), [_show("choose-tap"), Audit("choose-next", {"session": s.number})]


def _panel_jobs(state, event, limits) -> tuple[str, tuple[int, ...]] | None:
    """(the panel's person, those of `event.job_ids` that are their own held jobs), or None when
    nobody is logged in at the panel. Ids of anyone else's jobs are dropped here, whatever the
    panel sent."""
    s = state.s
    if not panel_fresh(s, event.at, limits):
        return None
    own = _jobs_of(s, s.panel_user)
    if event.job_ids is None:
        return s.panel_user, own
    wanted = set(event.job_ids)
    return s.panel_user, tuple(j for j in own if j in wanted)


def _nobody_logged_in(state, refused: str) -> tuple[State, list]:
    return state, [_show("not-authorized"), Audit(refused, {"session": state.session, "why": "nobody logged in"})]


def _jobs_chosen(state, event, limits):
    chosen = _panel_jobs(state, event, limits)
    if chosen is None:
        return _nobody_logged_in(state, "choose-refused")
    user, jobs = chosen
    s = replace(state.s, panel_since=event.at, last_activity=event.at)
    if not jobs:
        return Ready(s), [_show("no-jobs", user=user), Audit("choose-refused", {
            "session": s.number, "user": user, "why": "none of the person's held jobs"})]
    return _release(s, user, jobs, event.at)


def _jobs_deleted(state, event, limits):
    chosen = _panel_jobs(state, event, limits)
    if chosen is None:
        return _nobody_logged_in(state, "delete-refused")
    user, jobs = chosen
    s = replace(state.s, panel_since=event.at, last_activity=event.at,
                held=tuple(j for j in state.s.held if j.job_id not in jobs))
    if not jobs:
        return Ready(s), [Audit("delete-refused", {"session": s.number, "user": user,
                                                   "why": "none of the person's held jobs"})]
    # the desk cancels its copy (deleted by its owner: never delivered again); then it goes here
    return Ready(s), [ReportJobs(s.number, "deleted", jobs),
                      *[PurgeJob(s.number, j, "deleted by its owner") for j in jobs],
                      _show("jobs-deleted", count=len(jobs), user=user),
                      Audit("jobs-deleted", {"session": s.number, "user": user, "jobs": list(jobs)})]


def _logged_out(state, event, limits):
    s = replace(state.s, panel_user=None, choose_armed_at=None)
    return Ready(s), [_show(_ready_key(s), org=s.org), Audit("logged-out", {"session": s.number})]


def _accepted(state, event, limits):
    if event.user != state.user:  # an answer about someone else is not a yes
        return _back_to_ready(state.s, "not-authorized", "auth-mismatch", user=state.user)
    who = event.user
    if is_card_id(state.user):
        # A card known only by its UID: anyone can copy a UID, so it is yes only with the PIN, and
        # only for the person the org's server says the card is theirs.
        if not state.with_pin:
            return _back_to_ready(state.s, "not-authorized", "card-without-pin", user=state.user)
        if not event.as_user or is_card_id(event.as_user):
            return _back_to_ready(state.s, "not-authorized", "card-owner-unknown", user=state.user)
        who = event.as_user
    elif event.as_user and event.as_user != event.user:  # a badge is its own user's: no one else's
        return _back_to_ready(state.s, "not-authorized", "auth-mismatch", user=state.user)
    armed = choose_armed(state.s, event.at, limits)
    s = replace(state.s, authed_user=who, last_activity=event.at, panel_user=who, panel_since=event.at,
                choose_armed_at=None)
    noted = [Audit("auth-accepted", {"session": s.number, "user": who,
                                     **({"card": state.user} if who != state.user else {})}),
             *([PinAccepted(s.org, state.user)] if state.with_pin else [])]
    jobs = _jobs_of(s, who)
    if armed:  # "Choose my jobs" was touched before this tap: the panel lists them, nothing prints yet
        return Ready(s), [_show("your-jobs" if jobs else "no-jobs", user=who), *noted,
                          Audit("jobs-listed", {"session": s.number, "user": who, "jobs": len(jobs)})]
    if jobs:
        nxt, effects = _release(s, who, jobs, event.at)
        return nxt, [*noted, *effects]
    key = "ready-combined" if s.policy.combined_mode else "no-jobs"
    return Ready(s), [_show(key, org=s.org, user=who), *noted]


def is_card_id(user: str) -> bool:
    """A card known only by its UID (`card-<uid>`, hal.card.card_id), not a person's user id."""
    return user.startswith("card-")


def _rejected(state, event, limits):
    # One panel text for unknown, disabled, wrong-card and wrong-PIN users: a shared screen must
    # not tell a passer-by which user ids exist. The server's reply message goes to the journal.
    s = replace(state.s, last_activity=event.at)
    nxt, effects = _back_to_ready(s, "not-authorized", "auth-rejected", user=state.user,
                                  message=event.message, pin=state.with_pin)
    if state.with_pin:
        effects.append(PinFailed(s.org, state.user))
    return nxt, effects


def _ask_pin(state, event, limits):
    if event.user != state.user:
        return _back_to_ready(state.s, "not-authorized", "auth-mismatch", user=state.user)
    return AwaitingPin(state.s, state.user, event.at, event.challenge), [
        AskPin(state.session, state.user, event.prompt), _show("enter-pin"),
        Audit("pin-required", {"session": state.session, "user": state.user})]


def _unavailable(state, event, limits):
    return _back_to_ready(state.s, "auth-unavailable", "auth-unavailable", user=state.user)


def _pin_entered(state, event, limits):
    return _authenticate(state.s, state.user, event.at, pin=event.pin, challenge=state.challenge)


def _pin_cancelled(state, event, limits):
    return _back_to_ready(state.s, "pin-cancelled", "pin-cancelled", user=state.user)


def _pin_tick(state, event, limits):
    ended = _expired(state.s, event.at, idle=False)
    if ended:
        return _end(state, event.at, ended)
    if event.at - state.asked_at >= limits.pin_timeout_s:
        return _back_to_ready(state.s, "pin-timeout", "pin-timeout", user=state.user)
    return state, []


def _released(state, event, limits):
    done = set(event.job_ids) & set(state.job_ids)
    s = replace(state.s, held=tuple(j for j in state.s.held if j.job_id not in done),
                printing=state.s.printing + tuple(j for j in state.job_ids if j in done), last_activity=event.at)
    report = [ReportJobs(s.number, "released", tuple(j for j in state.job_ids if j in done))] if done else []
    more = _jobs_of(s, state.user) if s.policy.combined_mode and s.authed_user == state.user else ()
    if more:  # arrived while releasing
        nxt, effects = _release(s, state.user, more, event.at)
        return nxt, [*report, *effects]
    nxt, effects = _back_to_ready(s, "released", "released", user=state.user, count=len(done))
    return nxt, [*report, *effects]


def _release_failed(state, event, limits):
    return _back_to_ready(state.s, "release-failed", "release-failed", user=state.user,
                          reason=event.reason)


def _released_late(state, event, limits):
    if not isinstance(state, _InSession):
        return state, []
    late = set(event.job_ids)
    s = replace(state.s, held=tuple(j for j in state.s.held if j.job_id not in late),
                printing=state.s.printing + tuple(j for j in event.job_ids if j not in state.s.printing))
    return replace(state, s=s), [ReportJobs(s.number, "released", tuple(event.job_ids)), Audit("released-late", {"session": s.number,
                                                         "jobs": list(event.job_ids)})]


def _refuse_tap(state, event, limits):
    return state, [_show("out-of-service"), Audit("tap-refused", {"org": event.org, "fault": True})]


def _clear_fault(state, event, limits):
    return _purge(state, event.at, "fault cleared", "purging", number=state.session + 1)


def _tunnel_down(state, event, limits):
    return _purge(state, event.at, "tunnel down", "tunnel-down")


def _step_tick(state, event, limits):
    since = getattr(state, "since", None)
    if since is None or event.at - since < limits.step_timeout_s:
        return state, []
    if isinstance(state, Authenticating):  # a late answer has this attempt number: dropped later
        return _back_to_ready(state.s, "auth-unavailable", "auth-timeout", user=state.user)
    if isinstance(state, Releasing):
        return _back_to_ready(state.s, "release-failed", "release-timeout", user=state.user)
    return _purge(state, event.at, "step timeout", "step-timeout")


def _tap_busy(state, event, limits):
    org = _org(state)
    key = "busy" if event.org == org else "in-use"
    return state, [_show(key, org=org), Audit("tap-refused", {"session": state.session,
                                                              "org": event.org, "busy": True})]


def _tap_wait(state, event, limits):
    return state, [_show("busy")]


def _job_arrived(state, event, limits):
    fields = {"session": state.session, "job": event.job_id, "user": event.user,
              "origin": event.origin_ip}
    # before TunnelUp there is no print service and only the profile's (unnegotiated) selectors
    if not isinstance(state, SERVING) or not _inside(event.origin_ip, state.s.remote_ts):
        return state, [PurgeJob(state.session, event.job_id, "not from the tunnel"),
                       Audit("job-rejected", fields)]
    if event.proof in ("already released", "already printed"):  # its report was lost: tell it again
        return state, [PurgeJob(state.session, event.job_id, "released before"),
                       ReportJobs(state.session, event.proof.split()[1], (event.job_id,)),
                       Audit("job-redelivered", fields)]
    if event.proof not in ("ok", "retry"):  # its owner is a claim nobody proved: it never prints under a release
        return state, [PurgeJob(state.session, event.job_id, "owner not proven"),
                       Audit("job-unproven", {**fields, "why": str(event.proof)[:40]})]
    s = state.s
    if any(j.job_id == event.job_id for j in s.held):
        return state, [Audit("job-duplicate", fields)]
    s = replace(s, held=s.held + (HeldJob(event.job_id, event.user, event.origin_ip, event.at),),
                last_activity=event.at)
    audit = Audit("job-held", fields)
    # a job the engine failed to print comes back for its owner's own release (no loop of retries)
    if isinstance(state, Ready) and s.policy.combined_mode and s.authed_user == event.user and event.proof == "ok":
        nxt, effects = _release(s, event.user, (event.job_id,), event.at)
        return nxt, [audit, *effects]
    return replace(state, s=s), [audit]


def _job_done(state, event, limits):
    if not isinstance(state, _InSession):
        return state, []
    s = state.s
    was_printing = event.job_id in s.printing
    s = replace(s, held=tuple(j for j in s.held if j.job_id != event.job_id),
                printing=tuple(j for j in s.printing if j != event.job_id), last_activity=event.at)
    if isinstance(event, JobPrinted):
        effects = [Audit("job-printed", {"session": s.number, "job": event.job_id}),
                   ReportJobs(s.number, "printed", (event.job_id,))]
    elif was_printing:  # the engine did not print it: its desk delivers it again for its owner to retry
        effects = [Audit("job-not-printed", {"session": s.number, "job": event.job_id, "reason": event.reason}),
                   ReportJobs(s.number, "failed", (event.job_id,)), _show("job-failed")]
    else:
        effects = [Audit("job-gone", {"session": s.number, "job": event.job_id, "reason": event.reason})]
    if was_printing and s.policy.end_after_print and not s.printing and not s.held and isinstance(state, Ready):
        # the patent's step 140: the org's policy ends the session once its last job is out
        nxt, purge = _purge(replace(state, s=s), event.at, "printed", "printed-end")
        return nxt, [*effects, *purge]
    return replace(state, s=s), effects


def _card_unreadable(state, event, limits):
    return state, [_show(panel.card_key(event.kind)), Audit("card-unreadable", {"kind": event.kind})]
