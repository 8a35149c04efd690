"""The firmware's asyncio runtime: feeds events to the pure device machine and executes its effects.

One loop. The device machine (`firmware/device_machine.py`) keeps one session machine per open
session, each org's in its own sandbox; effects carry their session's number and go to that
session's `SessionRuntime`. Everything that blocks (the directory, VICI, pycups, RADIUS) runs in
worker threads and comes back as an event: each session's work (lookup, tunnel, release, purge) on
its own single-thread executor, in the order its machine asked for it; authentication on a small
pool so a slow RADIUS server never delays a purge; the print services start on a pool of their own
beside the lookups. Watcher threads (tunnel events, job events) post events while their session
lives. The runtime never holds an org secret: each session's secret keeper process does
(`firmware/secret_keeper.py`), and the purge ends it first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import threading
import time
from collections import deque

from firmware import effects as fx
from firmware import events as ev
from firmware import device_machine, journal, machine, outcomes, owner_proof, panel, panel_api, screen, sdnotify, status
from firmware.config import FirmwareConfig
from firmware.devices import Devices, build, build_directory
from firmware.diagnostics import MemoryDiagnostics
from firmware.pin_guard import PinGuard
from firmware.sandboxes import renice, renice_thread
from firmware.secret_keeper import KeeperError, SecretKeeper
from firmware.session import Session, purge
from firmware.session_runtime import PRINT_SERVICE_START_S, SessionRuntime
from hal.card import CardTap, CardUid, CardUnreadable, card_id, mask_uid
from hal.directory import DirectoryRefused
from hal.net import NetError
from hal.sandbox import ForwardingError
from hal.sandbox.forwarding import Forwarding
from hal.printer import EngineUnavailable
from hal.printer.engine import EngineOutcome
from hal.printer.engine_state import BLOCKING

TICK_S = 1.0
RELEASED_REPORT_AFTER_S = 0.15  # a "released" report waits this long (how a job ended is told at once)
SPARE_DELAY_S = 1.0  # the next session's keeper and sandbox are prepared this long after the effect
DEVICE_CERT_EVERY_S = 3600.0  # how often the device certificate is checked (renewed 8 h before its end)
SPARE_NICE = 10      # ... at this priority (a tap's own work goes first)


def _state_name(state) -> str:
    name = type(state).__name__
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def org_of(state) -> str | None:
    """The org a state serves (None when no org's data is held)."""
    if isinstance(state, machine.ORG_BEARING):
        return state.org if isinstance(state, machine.LookingUp) else state.s.org
    if isinstance(state, machine.Purging):
        return state.org
    return None


def describe(state) -> dict:
    """The non-secret view of a session machine's state for the status document."""
    view = {"state": _state_name(state), "org": org_of(state)}
    session = getattr(state, "s", None)
    if session is not None:
        view["held_jobs"] = [{"id": j.job_id, "user": j.user, "origin": j.origin_ip} for j in session.held]
        view["authenticated_user"] = session.authed_user
    if isinstance(state, (machine.Fault, machine.Stopped)):
        view["leftovers"] = list(state.leftovers)
    return view


def _card_kind(error: Exception) -> str:
    name = type(error).__name__
    if name in ("NoBadge", "BadgeWrongType"):
        return "unknown-card"
    if name == "BadgeUnsupportedVersion":
        return "unsupported"
    return "read-error"


CARD_LOOKUP_FRESH_S = 3.0  # a card's directory answer later than this is not taken as its tap


class Runtime:
    def __init__(self, cfg: FirmwareConfig, devices: Devices):
        self.cfg = cfg
        self.devices = devices
        self.device = device_machine.initial()
        self.limits = device_machine.DeviceLimits(pin_timeout_s=cfg.runtime.pin_timeout_s,
                                                  panel_return_s=cfg.panel.return_s, max_sessions=cfg.sessions.max)
        self.sessions: dict[int, SessionRuntime] = {}  # by session number: the open sessions' work
        self.panel = ""
        self.shown = screen.Shown()       # the machine's last panel key (the panel renders the screen from it)
        self.screen = panel_api.ScreenFeed()
        self.keypad = None                # a USB keypad (hal/panel/keypad.py), when configured
        self.keypad_typed = 0             # digits typed on it for the PIN asked now (the screen's dots)
        self.pin_guard = PinGuard()
        self.proof_nonces = owner_proof.NonceRecord(time.time)  # the device's, across sessions
        self.released = outcomes.ReleasedRecord(time.monotonic)  # delivery ids released here (no reprint)
        self.audit: deque[dict] = deque(maxlen=100)
        self.diagnostics = MemoryDiagnostics()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue = asyncio.Queue()
        most = cfg.sessions.max
        # device-wide work: the boot purge's sweep, the spare keeper and the spare sandbox
        self.device_worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="device")
        self.auth_worker = concurrent.futures.ThreadPoolExecutor(most, thread_name_prefix="auth")
        self.watchers = concurrent.futures.ThreadPoolExecutor(2 * most + 2, thread_name_prefix="watch")
        # A session's sandbox is taken and its print service (tmpfs, cupsd) started at the card event,
        # beside the lookup: threads of their own.
        self.preparer = concurrent.futures.ThreadPoolExecutor(2 * most, thread_name_prefix="prepare")
        # a card known by its UID is looked up in the cloud's card directory here (one at a time)
        self.card_lookups = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="card-lookup")
        # engine outcomes of jobs whose Released is not posted yet (SessionRuntime.release)
        self._outcome_lock = threading.Lock()
        self._releasing: set[tuple[int, int]] = set()
        self._deferred: list = []
        self._card_directory = None
        self.session_ends = None  # firmware/session_ends.py, once the daemon runs (enrolled devices)
        self.device_cert: dict = {}  # how the device certificate stands (firmware/device_cert.py)
        self.done = asyncio.Event()
        self.stopping = threading.Event()  # the same, for the daemon's own threads (asyncio's cannot be waited on there)
        self.taps = 0  # card events handled (lets a client tell that its tap was seen)
        self.spare_keeper: SecretKeeper | None = None  # the next session's keeper, holding nothing yet
        self.engine_stop = threading.Event()

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def state(self):
        """The session machine state the panel shows (the last tapped session; session-less when none)."""
        return device_machine.focused(self.device)

    def now(self) -> float:
        return time.monotonic()

    def post(self, event) -> None:
        """Hand an event to the loop; safe from any thread."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def dispatch(self, event) -> None:
        before = type(self.state).__name__
        self.device, effects = device_machine.step(self.device, event, self.limits)
        if isinstance(event, ev.PinEntered) and not any(isinstance(e, fx.Authenticate) and e.pin is event.pin
                                                        for e in effects):
            event.pin.wipe()  # a PIN nobody asked for any more
        after = type(self.state).__name__
        if self.keypad is not None and before != after and "AwaitingPin" in (before, after):
            self.keypad.clear()  # keys typed before the PIN was asked are not part of it
            self.keypad_typed = 0
        if before != after:
            journal.record("transition", state=after, previous=before, event=type(event).__name__,
                           org=org_of(self.state))
        for effect in effects:
            self.execute(effect)
        if isinstance(event, (ev.CardTapped, ev.CardUnreadable)):
            self.taps += 1
        self.refresh_screen()

    def refresh_screen(self) -> None:
        """Make the panel's screen from the state now (after every step; the Tick moves timers)."""
        state, now = self.state, self.now()
        sr = self.sessions.get(getattr(state, "session", None))
        s = sr.s if sr is not None else None
        attempts = None
        typed = 0
        if isinstance(state, machine.AwaitingPin):
            attempts = self.pin_guard.attempts_left(state.s.org, state.user, now)
            typed = self.keypad_typed
        printing = [(j.session, j.job_id, j.user, j.title, "printing" if i == 0 else "waiting")
                    for i, j in enumerate(self.devices.engine.pending())]
        facts = screen.Facts(jobs=s.jobs if s else {}, printing=printing, condition=self.devices.engine.condition,
                             attempts_left=attempts, typed=typed, local_id=s.local_id if s else "",
                             lang=self.cfg.panel.language, limits=self.limits,
                             clock_synced=self.device.clock_synced)
        try:
            self.screen.update(screen.screen_of(state, self.shown, now, facts))
        except Exception as exc:  # the panel must not take a step down with it
            journal.record("screen failed", level=40, error=type(exc).__name__)

    def _in(self, pool, fn, *args) -> None:
        """Run fn(*args) on `pool`; an unexpected exception becomes a journal line, not a hang."""
        def guarded():
            try:
                fn(*args)
            except Exception as exc:  # the machine's step timeouts recover the session
                journal.record("effect failed", level=40, effect=fn.__name__, error=type(exc).__name__)
        pool.submit(guarded)

    # -- effects -------------------------------------------------------------------------------

    def execute(self, effect) -> None:
        match effect:
            case fx.ShowPanel(message=message, key=key, fields=fields):
                self.panel = message
                self.shown = screen.Shown(key, fields, self.now())
                journal.record("panel", message=message)
            case fx.Audit(event=name, fields=fields):
                # a card known by its UID goes by `card-<uid>`: never in full in the journal or status
                entry = {"event": name, **{k: panel.mask_card(v) for k, v in fields.items()},
                         "t": round(time.time(), 4)}  # wall clock: comparable across hosts
                self.audit.append(entry)
                journal.record("audit", **entry)
            case fx.AskPin():
                pass  # the panel asks while the machine is in AwaitingPin (see `snapshot`)
            case fx.FetchProfile():
                self._open_session(effect)
                self._on_session(effect, "fetch_profile")
            case fx.PreparePrintService():
                if (sr := self._current(effect.session)) is not None:
                    # needs nothing of the org: starts now, beside the lookup and IKE, on its own thread
                    sr.s.print_service_ready = self.preparer.submit(self._prepare, sr)
            case fx.StartSpareKeeper():
                # Not beside a tap's lookup and IKE: a keeper's interpreter and a sandbox with its
                # charon cost far more CPU than the tap's own work, and would slow it down.
                self.loop.call_later(SPARE_DELAY_S, self._in, self.device_worker, self._spawn_spares)
            case fx.EndLookup():
                if (sr := self._current(effect.session)) is not None:
                    self._in(sr.worker, self._end_keeper, sr.s)
            case fx.PinFailed(org=org, user=user):
                locked = self.pin_guard.failed(org, user, self.now())
                if locked:
                    journal.record("pin lockout", org=org, minutes=round(locked / 60))
            case fx.BringUpTunnel():
                self._on_session(effect, "bring_up_tunnel", failed=ev.TunnelFailed(self.now(), effect.session,
                                                                                   "no session"))
            case fx.StartPrintService():
                self._on_session(effect, "start_print_service",
                                 failed=ev.PrintServiceFailed(self.now(), effect.session, "no session"))
            case fx.ReleaseJobs():
                self._on_session(effect, "release",
                                 failed=ev.ReleaseFailed(self.now(), effect.session, effect.job_ids, "no session"))
            case fx.ReportJobs(state="released"):
                # After the engine has the document: the report's round trip through the tunnel
                # (five processes on a Pi's two cores) would slow the print it reports.
                self.loop.call_later(RELEASED_REPORT_AFTER_S, self._on_session, effect, "report_jobs")
            case fx.ReportJobs():
                self._on_session(effect, "report_jobs")
            case fx.PurgeJob():
                self._on_session(effect, "purge_job")
            case fx.PinAccepted(org=org, user=user):
                self.pin_guard.succeeded(org, user, self.now())
            case device_machine.Renumber(old=old, new=new):
                # a faulted session purged again under a new number: its work follows the number
                if (sr := self.sessions.pop(old, None)) is not None:
                    sr.s.number = new
                    self.sessions[new] = sr
            case fx.Purge():
                sr = self._current(effect.session)
                self._in(sr.worker if sr is not None else self.device_worker, self._purge, effect)
            case fx.Authenticate():
                self._on_session(effect, "authenticate", pool=self.auth_worker,
                                 failed=ev.AuthUnavailable(self.now(), effect.session, effect.attempt, "no session"))
            case _:
                journal.record("unknown effect", level=40, effect=type(effect).__name__)

    def _current(self, number: int) -> SessionRuntime | None:
        return self.sessions.get(number)

    def _on_session(self, effect, method: str, *, pool=None, failed=None) -> None:
        """Run `method` of the effect's session on `pool` (default: that session's worker, in order
        with the work queued before). A session that is gone answers `failed` (or nothing)."""
        sr = self._current(effect.session)

        def run() -> None:
            if sr is None:
                if isinstance(effect, fx.Authenticate) and effect.pin is not None:
                    effect.pin.wipe()
                if failed is not None:
                    self.post(failed)
                return
            getattr(sr, method)(effect)

        run.__name__ = method
        self._in(pool or (sr.worker if sr is not None else self.device_worker), run)

    def _open_session(self, e: fx.FetchProfile) -> None:
        """The SessionRuntime of a lookup (on the loop, so that effects after it find it), and its
        sandbox slot taken at once (the spare, built ahead) on a preparer thread."""
        sr = SessionRuntime(Session(number=e.session, org=e.org), self)
        self.sessions[e.session] = sr
        sr.slot_ready = self.preparer.submit(self._take_slot, sr)

    def _take_slot(self, sr: SessionRuntime) -> None:
        sr.s.slot = self.devices.sandboxes.take()  # raises SlotError: the session's steps fail cleanly
        journal.record("sandbox taken", session=sr.number, sandbox=sr.s.slot.name)

    def _prepare(self, sr: SessionRuntime) -> None:
        self.devices.ensure_engine_model()  # built ahead; here only when the engine could not be asked
        sr.slot_ready.result(timeout=PRINT_SERVICE_START_S)
        sr.prepare_print_service()

    def _spawn_spares(self) -> None:
        """Start the next session's keeper and build its sandbox now (they hold nothing yet), so that
        a tap does not wait for a Python interpreter, a network namespace or a charon. On the device
        worker: after the work queued before it."""
        if self.done.is_set():
            return
        # This thread's processes (keeper, sandbox tools, charon) inherit its low priority: a tap's
        # own work beside them gets the CPU first. Raised again when a session takes them (renice).
        renice_thread(SPARE_NICE)
        try:
            try:
                self.devices.ensure_engine_model()
            except Exception as exc:  # said; a tap tries again (and says "printer not connected")
                journal.record("engine model not built", level=30, error=f"{type(exc).__name__}: {exc}")
            if self.spare_keeper is None:
                try:
                    self.spare_keeper = SecretKeeper(self.keeper_config())
                except (KeeperError, OSError) as exc:
                    journal.record("keeper start failed", level=40, error=type(exc).__name__)
                    self.spare_keeper = None
            self.devices.sandboxes.prepare_spare(ready=self._spare_print_service)
        finally:
            # the device worker also runs device-wide purges and sweeps: those at normal priority
            renice_thread(0)

    def _spare_print_service(self, slot) -> None:
        """Start the spare slot's print service (its tmpfs and cupsd; nothing of any org) when the
        engine's model is at hand: a tap then only checks it still fits the engine. On failure
        nothing of it stays (the session starts one itself)."""
        service = None
        try:
            slot.session_fs.mount()
            service = self.devices.print_service(slot.session_fs.path, slot.command_prefix)
            if not self.devices.serves_engine(service):
                raise EngineUnavailable("no model of the engine at hand")
            service.start()
            slot.print_service = service
        except Exception:
            if service is not None:
                service.stop()
            slot.session_fs.unmount()
            raise

    def keeper_config(self) -> dict:
        """The config a keeper starts with: the daemon's, the tunnel backend as detected."""
        cfg = self.cfg.as_dict()
        cfg["tunnel"]["backend"] = self.devices.backend
        return cfg

    def take_spare_keeper(self) -> SecretKeeper:
        keeper, self.spare_keeper = self.spare_keeper, None
        if keeper is None or not keeper.alive():
            keeper = SecretKeeper(self.keeper_config())
        renice(keeper.pid, 0)  # prepared at low priority; a session's work is not
        return keeper

    def _end_keeper(self, s: Session) -> None:
        if s.keeper is not None:
            s.keeper.stop()
            s.keeper = None

    def _engine_outcome(self, outcome: EngineOutcome) -> None:
        """How a released job ended at the engine (on the engine's thread): journalled whatever became
        of its session, and told to the machine (its session's `printing` list)."""
        job = outcome.job
        journal.record("engine job", org=job.org, session=job.session, job=job.job_id, state=outcome.state,
                       printed=outcome.printed, reason=outcome.reason)
        if job.delivery:  # the device's record, whatever became of the session: no reprint, or a retry
            self.released.add(job.delivery, "printed" if outcome.printed else "failed")
        if outcome.printed:
            event = ev.JobPrinted(self.now(), job.session, job.job_id)
        else:
            event = ev.JobGone(self.now(), job.session, job.job_id, f"not printed: {outcome.state} {outcome.reason}".strip())
        with self._outcome_lock:
            if (job.session, job.job_id) in self._releasing:
                self._deferred.append(event)  # its Released is not posted yet: after it
                return
        self.post(event)

    def hold_outcomes(self, session: int, job_ids) -> None:
        """Engine outcomes of these jobs wait until `release_outcomes` (their Released goes first)."""
        with self._outcome_lock:
            self._releasing |= {(session, j) for j in job_ids}

    def release_outcomes(self, session: int, job_ids) -> None:
        with self._outcome_lock:
            self._releasing -= {(session, j) for j in job_ids}
            ready = [e for e in self._deferred if (e.session, e.job_id) not in self._releasing]
            self._deferred = [e for e in self._deferred if (e.session, e.job_id) in self._releasing]
        for event in ready:
            self.post(event)

    def _purge(self, e: fx.Purge) -> None:
        """End session `e.session` (on its worker, after its queued work) or, for a number of no open
        session (the boot purge, a cleared fault), sweep what no live session owns."""
        sr = self.sessions.get(e.session)
        s = sr.s if sr is not None else None
        if s is not None:
            self._end_keeper(s)  # first: every secret of the session dies with it
            waits = [f for f in (sr.slot_ready, s.print_service_ready) if f is not None]
            # a sandbox still being taken, a print service still starting would outlive the purge
            concurrent.futures.wait(waits, timeout=PRINT_SERVICE_START_S)
        report = purge(self.devices, s, e.reason)
        if s is not None and self.session_ends is not None:
            self.session_ends.ended(s.org)  # the cloud counts it open until told (firmware/session_ends.py)
        if sr is not None:
            self.loop.call_soon_threadsafe(self._closed, sr)
        self.post(ev.PurgeDone(self.now(), e.session, report.ok, report.leftovers))

    def _closed(self, sr: SessionRuntime) -> None:
        """On the loop: the purged session's runtime goes (its worker ends after this purge)."""
        if self.sessions.get(sr.number) is sr:
            del self.sessions[sr.number]
        sr.worker.shutdown(wait=False)

    def _serve_engine(self) -> None:
        """The engine's thread: first what a previous daemon released and left in the spool."""
        engine = self.devices.engine
        try:
            if left := engine.resume():
                journal.record("engine spool resumed", jobs=len(left))
            engine.serve(self.engine_stop, self._engine_outcome)
        except Exception as exc:
            journal.record("print engine failed", level=50, error=f"{type(exc).__name__}: {exc}")

    # -- inputs --------------------------------------------------------------------------------

    async def _read_cards(self) -> None:
        while not self.done.is_set():
            try:
                async for card_event in self.devices.card.events():
                    match card_event:
                        case CardTap():
                            journal.record("tap", user=card_event.user_id, org=card_event.org_id,
                                           uid=mask_uid(card_event.uid))
                            locked = self.pin_guard.locked_for(card_event.org_id, card_event.user_id,
                                                               self.now()) > 0
                            self.post(ev.CardTapped(self.now(), card_event.user_id, card_event.org_id,
                                                    mask_uid(card_event.uid), pin_locked=locked,
                                                    proof=card_event.proof))
                        case CardUid():
                            self._card_by_uid(card_event)
                        case CardUnreadable(error=error):
                            self.post(ev.CardUnreadable(self.now(), _card_kind(error)))
            except Exception as exc:  # the reader is retried: the daemon keeps running
                journal.record("card reader failed", level=40, error=f"{type(exc).__name__}: {exc}")
                self.panel = "Card reader unavailable — call the operator"
                await asyncio.sleep(2)

    def _card_by_uid(self, card) -> None:
        """A card known only by its UID: the cloud's card directory says whose org it is (one signed
        request, on a thread: the loop goes on), then it taps as `card-<uid>`; the org's own server
        says whose card it is, and always asks for the PIN (firmware/machine.py `_accepted`)."""
        ident = card_id(card.uid, card.kind)
        journal.record("tap", card=mask_uid(card.uid), kind=card.kind)
        if ident is None or not self.device.clock_synced:  # (no TLS to the cloud on a wrong clock)
            self.post(ev.CardUnreadable(self.now(), "unknown-card"))
            return
        uid_tag = mask_uid(card.uid)
        taps, asked = self.taps, time.monotonic()

        def look_up() -> None:
            try:
                org = self.card_directory().card_org(ident)
            except DirectoryRefused:
                journal.record("card not registered", card=uid_tag)
                self.post(ev.CardUnreadable(self.now(), "unknown-card"))
                return
            except Exception as exc:  # the cloud down or lying: said on the panel, nothing else
                journal.record("card lookup failed", level=30, card=uid_tag, error=type(exc).__name__)
                self.post(ev.CardUnreadable(self.now(), "card-directory-unreachable"))
                return
            if self.taps != taps:  # another card was taken meanwhile: this tap is stale, it ends here
                journal.record("card lookup outdated: dropped", card=uid_tag)
                return
            if time.monotonic() - asked > CARD_LOOKUP_FRESH_S:  # the person may have given up
                journal.record("card lookup too slow: dropped", card=uid_tag)
                self.post(ev.CardUnreadable(self.now(), "card-directory-unreachable"))
                return
            # the PIN lockout is the loop's (not thread-safe): looked at there
            self.loop.call_soon_threadsafe(self._card_tapped, ident, org, uid_tag)

        self.card_lookups.submit(look_up)

    def _card_tapped(self, ident: str, org: str, uid_tag: str) -> None:
        locked = self.pin_guard.locked_for(org, ident, self.now()) > 0
        self.queue.put_nowait(ev.CardTapped(self.now(), ident, org, uid_tag, pin_locked=locked))

    def card_directory(self):
        """The daemon's own directory client for card lookups (their answers hold no secret)."""
        if self._card_directory is None:
            self._card_directory = build_directory(self.cfg)
        return self._card_directory

    def _keep_device_cert(self) -> None:
        """The device's certificate from its space's CA (firmware/device_cert.py), at start and then
        every hour (every minute while the cloud does not give one): what the device shows orgs in
        certificate mode. Never raises; the journal and `status.device_cert` say how it stands."""
        from firmware import device_cert

        if not self.cfg.device.device_id:
            return
        client = None
        while not self.stopping.is_set():
            try:
                client = client or build_directory(self.cfg)
                state = device_cert.ensure(self.cfg, client, time.time())
            except Exception as exc:  # noqa: BLE001 (a bug or a config fault: said, retried)
                state = None
                journal.record("device certificate not renewed", level=40, error=type(exc).__name__)
            if state is not None:
                self.device_cert = {"status": state.status, "usable": state.usable}
                journal.record("device certificate", level=20 if state.usable else 30, status=state.status,
                               reason=state.reason)
            # (not `self.done.wait`: an asyncio.Event's wait takes no timeout, and the TypeError
            # ended this thread after its first round: the certificate was never renewed)
            self.stopping.wait(DEVICE_CERT_EVERY_S if state is not None and state.usable else 60)

    def _check_clock(self) -> bool:
        """Ask the clock once (hal/clock) and tell the machine; True when it is synchronised."""
        from hal import clock

        synced = clock.synchronised()
        self.post(ev.ClockChecked(self.now(), synced))
        return synced

    async def _watch_clock(self) -> None:
        """While the clock is not synchronised, ask it every `clock.check_every_s` and say how it
        stands: the machine refuses taps meanwhile; the panel, the journal, `status.clock` and the
        unit's status (sd_notify STATUS) say "clock not synchronised". Once it is, the device serves
        and the watch ends (the NTP client keeps a synchronised clock so)."""
        from hal import clock

        since = self.now()
        journal.record("clock not synchronised: no session opens until network time comes", level=30)
        sdnotify.notify("STATUS=clock not synchronised: waiting for network time")
        while not self.done.is_set():
            await asyncio.sleep(self.cfg.clock.check_every_s)
            if await asyncio.to_thread(clock.synchronised):
                self.post(ev.ClockChecked(self.now(), True))
                journal.record("clock synchronised", waited_s=round(self.now() - since, 1))
                sdnotify.notify("STATUS=serving")
                return

    async def _tick(self) -> None:
        interval = sdnotify.watchdog_interval()
        last_ping = 0.0
        while not self.done.is_set():
            await asyncio.sleep(TICK_S)
            self.post(ev.Tick(self.now()))  # its step refreshes the screen: timers, the printer's condition
            if interval is not None and self.now() - last_ping >= interval:
                sdnotify.notify("WATCHDOG=1")
                last_ping = self.now()

    async def _control(self, request: dict) -> dict:
        cmd = request.get("cmd", "status")
        if cmd == "status":
            return self.snapshot()
        if cmd == "pin-cancel":
            if isinstance(self.state, machine.AwaitingPin):
                self.post(ev.PinCancelled(self.now(), self.state.session))
            return {"ok": True}
        if cmd == "clear-fault":
            self.post(ev.FaultCleared(self.now()))
            return {"ok": True}
        if cmd == "memory":
            return await asyncio.to_thread(self.diagnostics.report, baseline=bool(request.get("baseline")),
                                           compare=bool(request.get("compare")))
        return {"error": f"unknown command {cmd!r}"}

    async def _panel(self, request: dict) -> dict:
        """A request on the panel socket (firmware/panel_api.py)."""
        cmd = request.get("cmd", "screen")
        try:
            if cmd == "screen":
                return self.screen.current()
            if cmd == "wait":
                return await self.screen.wait(request.get("after"), request.get("timeout", panel_api.MAX_WAIT_S))
            event = panel_api.event_for(request, self.now(), self.state)
        except panel_api.PanelRequestError as exc:
            return {"error": str(exc)}
        if event is not None:
            self.post(event)
        return {"ok": True}

    def _start_keypad(self) -> None:
        """The USB keypad, when `panel.kind` names it: its thread calls back onto the loop."""
        if "keypad" not in self.cfg.panel.kind.split(","):
            return
        from hal.panel.keypad import KeypadError, KeypadReader

        where = self.cfg.panel.keypad_device
        loop = self.loop

        def on_pin(pin: ev.Pin) -> None:
            loop.call_soon_threadsafe(self._keypad_pin, pin)

        def on_cancel() -> None:
            loop.call_soon_threadsafe(self._keypad_cancel)

        def on_activity(digits: int) -> None:
            loop.call_soon_threadsafe(self._keypad_typed, digits)
        try:
            self.keypad = KeypadReader(where if where.startswith("/") else "", on_pin, on_cancel, on_activity,
                                       name="" if where.startswith("/") else where).start()
        except (KeypadError, OSError) as exc:
            journal.record("keypad not started", level=40, error=f"{type(exc).__name__}: {exc}")

    def _keypad_pin(self, pin: ev.Pin) -> None:
        self.keypad_typed = 0
        reply = self._pin(pin)
        if "error" in reply:
            journal.record("keypad PIN dropped", reason=reply["error"])
        self.refresh_screen()

    def _keypad_cancel(self) -> None:
        self.keypad_typed = 0
        if isinstance(self.state, machine.AwaitingPin):
            self.post(ev.PinCancelled(self.now(), self.state.session))

    def _keypad_typed(self, digits: int) -> None:
        self.keypad_typed = digits
        self.refresh_screen()

    def _pin(self, pin: ev.Pin) -> dict:
        """A PIN from the panel (`status` hands it over as bytes): to the authentication that waits
        for it, or wiped."""
        state = self.state
        if not machine.pin_open(state, self.now(), self.limits):
            pin.wipe()
            return {"error": "no PIN is being asked for"}
        self.post(ev.PinEntered(self.now(), state.session, pin))
        return {"ok": True}

    def _session_view(self, state) -> dict:
        """One session's part of the status: its machine state, tunnel, held and printing jobs."""
        view = describe(state)
        sr = self.sessions.get(getattr(state, "session", None))
        s = sr.s if sr is not None else None
        jobs = s.jobs if s else {}
        view["held_jobs"] = [dict(j, **{k: v for k, v in jobs.get(j["id"], {}).items() if k in ("title", "bytes")})
                             for j in view.get("held_jobs", [])]
        view["tunnel"] = {"up": bool(s and s.virtual_ip and view.get("org")),
                          "virtual_ip": s.virtual_ip if s else None,
                          "sandbox": s.slot.name if s is not None and s.slot is not None else None,
                          "backend": self.devices.backend}  # kernel (XFRM) or libipsec, as resolved at start
        number = getattr(state, "session", None)
        view["printing"] = [{"id": j.job_id, "user": j.user, "title": j.title}
                            for j in self.devices.engine.pending() if j.session == number]
        return view

    def snapshot(self) -> dict:
        view = self._session_view(self.state)
        sessions = {org: {k: v for k, v in self._session_view(st).items() if k != "org"}
                    for org, st in device_machine.by_org(self.device).items()}
        condition = self.devices.engine.condition
        reader = self.devices.card.reader_state()
        reader_usable = reader["connected"] or any(r["connected"] for r in reader.get("readers", []))
        line = self.panel if reader_usable else panel.text_join(panel.text("reader-not-connected"), self.panel)
        if not self.device.clock_synced and panel.text("clock-unsynchronised") not in line:
            line = panel.text_join(panel.text("clock-unsynchronised"), line)
        return {
            "state": view["state"],
            "org": view.get("org"),
            "panel": panel.with_printer(line, condition if condition in BLOCKING else ""),
            "card_reader": reader,
            "printer": panel.text(condition) if condition else "",
            "pin_requested": machine.pin_open(self.state, self.now(), self.limits),
            "taps": self.taps,
            "tunnel": view["tunnel"],
            "held_jobs": view["held_jobs"],
            "printing": view["printing"],
            "authenticated_user": view.get("authenticated_user"),
            "sessions": sessions,
            "sessions_max": self.cfg.sessions.max,
            "spare": self.devices.sandboxes.spare_view(),
            "device_cert": self.device_cert,
            "clock": {"synchronised": self.device.clock_synced, "required": self.cfg.clock.require_sync},
            "panel_url": f"http://{self.cfg.panel.listen}/" if "web" in self.cfg.panel.kind.split(",") else None,
            "screen": self.screen.doc.get("screen"),
            "engine": self.devices.engine.view(),
            "leftovers": view.get("leftovers", []),
            "audit": list(self.audit)[-30:],
        }

    # -- main ----------------------------------------------------------------------------------

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        server = await status.serve(self.cfg.runtime.status_socket, self._control, self._pin)
        try:
            panel_server = await status.serve(self.cfg.panel.socket, self._panel, self._pin,
                                              group=self.cfg.panel.socket_group)
        except (OSError, KeyError) as exc:  # no panel (a group that does not exist): the daemon serves on
            journal.record("panel socket not served", level=50, error=f"{type(exc).__name__}: {exc}")
            panel_server = None
        self._start_keypad()
        self.refresh_screen()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, lambda: self.post(ev.Shutdown(self.now())))
        tasks = [asyncio.create_task(self._read_cards()), asyncio.create_task(self._tick())]
        engine_thread = threading.Thread(target=self._serve_engine, name="engine", daemon=True)
        engine_thread.start()
        threading.Thread(target=self._keep_device_cert, name="device-cert", daemon=True).start()
        if self.cfg.device.device_id and self.cfg.cloud.url:
            from firmware.session_ends import ALL, SessionEnds

            self.session_ends = SessionEnds(lambda: build_directory(self.cfg)).start()
            self.session_ends.ended(ALL)  # a previous daemon's sessions ended with it (the boot purge)
        # The device firewall and the kernel's network settings hold before anything else: if not,
        # the boot purge's check finds it and latches Fault (no session), the daemon stays up.
        try:
            self.devices.firewall.install()
            Forwarding(self.devices.firewall.netns).install()  # the sandboxes' doors, closed until a session opens one
        except (NetError, ForwardingError) as exc:
            journal.record("device firewall not installed: no sessions", level=50, error=str(exc))
        if wrong := self.devices.network_leftovers(gateways=False):
            journal.record("device network not as required: no sessions", level=50, found="; ".join(wrong))
        if self.cfg.clock.require_sync and not self._check_clock():  # before Boot: no tap slips in
            tasks.append(asyncio.create_task(self._watch_clock()))
        self.post(ev.Boot(self.now()))
        sdnotify.notify("READY=1")
        try:
            while True:
                event = await self.queue.get()
                try:
                    self.dispatch(event)
                except Exception as exc:  # a bug in one step must not take the daemon down
                    journal.record("step failed", level=40, event=type(event).__name__,
                                   error=f"{type(exc).__name__}: {exc}")
                if isinstance(self.state, machine.Stopped):
                    break
        finally:
            self.done.set()
            self.stopping.set()
            sdnotify.notify("STOPPING=1")
            self.engine_stop.set()  # a job still spooled is printed after the next start
            self.devices.engine.stop_waiting()
            for t in tasks:
                t.cancel()
            await self.devices.card.close()
            server.close()
            if panel_server is not None:
                panel_server.close()
            if self.keypad is not None:
                self.keypad.stop()
            for sr in list(self.sessions.values()):
                sr.worker.shutdown(wait=True)
            self.device_worker.shutdown(wait=True)
            self.preparer.shutdown(wait=True)
            if self.spare_keeper is not None:
                self.spare_keeper.stop()
            self.devices.sandboxes.close()
            if self.devices.driver_queue is not None:
                self.devices.driver_queue.stop()
            self.auth_worker.shutdown(wait=False, cancel_futures=True)
            self.card_lookups.shutdown(wait=False, cancel_futures=True)
            self.watchers.shutdown(wait=False, cancel_futures=True)


def run_daemon(cfg: FirmwareConfig) -> int:
    journal.setup()
    journal.record("starting", device=cfg.device.device_id or "unenrolled", card=cfg.card.kind,
                   tunnel=cfg.tunnel.backend)
    runtime = Runtime(cfg, build(cfg))
    asyncio.run(runtime.run())
    journal.record("stopped")
    return 0
