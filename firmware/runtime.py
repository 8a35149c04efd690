"""The firmware's asyncio runtime: feeds events to the pure machine and executes its effects.

One loop. Everything that blocks (the directory, VICI, pycups, RADIUS) runs in worker threads and
comes back as an event: session work (lookup, tunnel, print service, release, purge) on one
single-thread executor so that it happens in the order the machine asked for it; authentication on
its own thread so a slow RADIUS server never delays a purge. Watcher threads (tunnel events, job
events) post events while their session lives. The runtime never holds an org secret: the session's
secret keeper process does (`firmware/secret_keeper.py`), and the purge ends it first.
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
from firmware import journal, machine, sdnotify, status
from firmware.config import FirmwareConfig
from firmware.devices import Devices, build
from firmware.diagnostics import MemoryDiagnostics
from firmware import outcomes, owner_proof
from firmware.pin_guard import PinGuard
from firmware.session import Session, purge
from hal.card import CardTap, CardUnreadable, mask_uid
from firmware.keeper_protocol import LookupRefused, TunnelRefused
from firmware.secret_keeper import KeeperError, SecretKeeper
from hal.auth import Accepted, BadInput, PinRequired, Rejected, Unavailable
from hal.net import NetError
from hal.printer import JobGone, JobHeld
from hal.printer.engine import EngineOutcome
from hal.tunnel import TunnelError

TICK_S = 1.0
PRINT_SERVICE_START_S = 30.0  # cupsd start + queues; SessionPrintService bounds its own steps


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
    """The non-secret view of a state for the status document."""
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


class Runtime:
    def __init__(self, cfg: FirmwareConfig, devices: Devices):
        self.cfg = cfg
        self.devices = devices
        self.state = machine.initial()
        self.limits = machine.Limits(pin_timeout_s=cfg.runtime.pin_timeout_s)
        self.session: Session | None = None
        self.panel = ""
        self.pin_guard = PinGuard()
        self.proof_nonces = owner_proof.NonceRecord(time.time)  # the device's, across sessions
        self.released = outcomes.ReleasedRecord(time.monotonic)  # delivery ids released here (no reprint)
        self.incoming: Session | None = None  # another org's lookup, made while `session` serves
        self.audit: deque[dict] = deque(maxlen=100)
        self.diagnostics = MemoryDiagnostics()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue = asyncio.Queue()
        self.session_worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="session")
        self.auth_worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="auth")
        self.watchers = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="watch")
        # The print service (tmpfs, cupsd) starts at the card event: its own thread.
        self.preparer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prepare")
        self.done = asyncio.Event()
        self.taps = 0  # card events handled (lets a client tell that its tap was seen)
        self.spare_keeper: SecretKeeper | None = None  # the next session's keeper, holding nothing yet
        self.engine_stop = threading.Event()

    # -- plumbing ------------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic()

    def post(self, event) -> None:
        """Hand an event to the loop; safe from any thread."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def dispatch(self, event) -> None:
        before = type(self.state).__name__
        self.state, effects = machine.step(self.state, event, self.limits)
        if isinstance(event, ev.PinEntered) and not any(isinstance(e, fx.Authenticate) and e.pin is event.pin
                                                        for e in effects):
            event.pin.wipe()  # a PIN nobody asked for any more
        after = type(self.state).__name__
        if before != after:
            journal.record("transition", state=after, previous=before, event=type(event).__name__,
                           org=org_of(self.state))
        for effect in effects:
            self.execute(effect)
        if isinstance(event, (ev.CardTapped, ev.CardUnreadable)):
            self.taps += 1

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
            case fx.ShowPanel(message=message):
                self.panel = message
                journal.record("panel", message=message)
            case fx.Audit(event=name, fields=fields):
                entry = {"event": name, **fields, "t": round(time.time(), 4)}  # wall clock: comparable across hosts
                self.audit.append(entry)
                journal.record("audit", **entry)
            case fx.AskPin():
                pass  # the panel asks while the machine is in AwaitingPin (see `snapshot`)
            case fx.FetchProfile():
                self._open_session(effect)
                self._in(self.session_worker, self._fetch_profile, effect)
            case fx.PreparePrintService():
                s = self._current(effect.session)
                if s is not None:
                    # needs nothing of the org: starts now, beside the lookup and IKE, on its own thread
                    s.print_service_ready = self.preparer.submit(self._prepare_print_service, s)
            case fx.StartSpareKeeper():
                self._in(self.session_worker, self._spawn_spare_keeper)
            case fx.EndLookup():
                self._in(self.session_worker, self._end_lookup, effect)
            case fx.PinFailed(org=org, user=user):
                locked = self.pin_guard.failed(org, user, self.now())
                if locked:
                    journal.record("pin lockout", org=org, minutes=round(locked / 60))
            case fx.BringUpTunnel():
                self._in(self.session_worker, self._bring_up_tunnel, effect)
            case fx.StartPrintService():
                self._in(self.session_worker, self._start_print_service, effect)
            case fx.ReleaseJobs():
                self._in(self.session_worker, self._release, effect)
            case fx.ReportJobs():
                self._in(self.session_worker, self._report_jobs, effect)
            case fx.PurgeJob():
                self._in(self.session_worker, self._purge_job, effect)
            case fx.PinAccepted(org=org, user=user):
                self.pin_guard.succeeded(org, user, self.now())
            case fx.Purge():
                self._in(self.session_worker, self._purge, effect)
            case fx.Authenticate():
                self._in(self.auth_worker, self._authenticate, effect)
            case _:
                journal.record("unknown effect", level=40, effect=type(effect).__name__)

    def _current(self, number: int) -> Session | None:
        for s in (self.session, self.incoming):
            if s is not None and s.number == number:
                return s
        return None

    def _open_session(self, e: fx.FetchProfile) -> None:
        """The Session object of a lookup (on the loop, so that effects after it find it): the
        session itself when none serves, else the incoming one (another org's tap)."""
        s = Session(number=e.session, org=e.org)
        if self.session is None:
            self.session = s
        else:
            if self.incoming is not None:  # an abandoned lookup: its keeper ends on the worker
                self._in(self.session_worker, self._end_keeper, self.incoming)
            self.incoming = s

    def _end_lookup(self, e: fx.EndLookup) -> None:
        s = self.incoming
        if s is not None and s.number == e.session:
            self.incoming = None
            self._end_keeper(s)

    def _fetch_profile(self, e: fx.FetchProfile) -> None:
        s = self._current(e.session)
        if s is None:  # abandoned before it started
            return
        try:
            s.keeper = self._take_spare_keeper()  # from here on, the purge ends it
            reply = s.keeper.fetch(e.org, timeout=self.cfg.cloud.timeout_s * 3 + 5)
        except KeeperError:
            self.post(ev.LookupFailed(self.now(), e.session, "unreachable"))
            return
        if isinstance(reply, LookupRefused):
            self.post(ev.LookupFailed(self.now(), e.session, reply.kind))
            return
        s.gateway = reply.gateway  # the device firewall admits IKE/ESP with it alone
        s.desk_keys = reply.desk_keys
        s.outcomes_url = reply.outcomes_url
        pol = reply.policy
        self.post(ev.ProfileFetched(self.now(), e.session, reply.org, reply.remote_ts,
                                    ev.Policy(pol.idle_timeout_s, pol.max_hold_s, pol.combined_mode),
                                    reply.device_networks))

    def _spawn_spare_keeper(self) -> None:
        """Start the next session's keeper now (it holds nothing yet), so that a tap does not wait
        for a Python interpreter to start and import the hal. On the session worker: after the work
        queued before it (a lookup that takes the spare first)."""
        if self.spare_keeper is not None or self.done.is_set():
            return
        try:
            self.spare_keeper = SecretKeeper(self.cfg.as_dict())
        except (KeeperError, OSError) as exc:
            journal.record("keeper start failed", level=40, error=type(exc).__name__)
            self.spare_keeper = None

    def _take_spare_keeper(self) -> SecretKeeper:
        keeper, self.spare_keeper = self.spare_keeper, None
        if keeper is None or not keeper.alive():
            keeper = SecretKeeper(self.cfg.as_dict())
        return keeper

    def _end_keeper(self, s: Session) -> None:
        if s.keeper is not None:
            s.keeper.stop()
            s.keeper = None

    def _bring_up_tunnel(self, e: fx.BringUpTunnel) -> None:
        s = self._current(e.session)
        if s is None or s.keeper is None:
            self.post(ev.TunnelFailed(self.now(), e.session, "no profile"))
            return
        try:
            self.devices.firewall.allow_gateway(s.gateway)  # before IKE's first packet; the purge forgets it
            reply = s.keeper.tunnel_up(self.cfg.tunnel.up_timeout_s, timeout=self.cfg.tunnel.up_timeout_s + 10)
        except (KeeperError, OSError, NetError) as exc:
            self.post(ev.TunnelFailed(self.now(), e.session, type(exc).__name__))
            return
        if isinstance(reply, TunnelRefused):
            self.post(ev.TunnelFailed(self.now(), e.session, reply.cause))
            return
        self.devices.tunnel.follow(s.org)
        s.virtual_ip = reply.virtual_ip
        self.watchers.submit(self._watch_tunnel, s)
        self.post(ev.TunnelUp(self.now(), e.session, reply.virtual_ip, reply.remote_ts))

    def _watch_tunnel(self, s: Session) -> None:
        try:
            for down in self.devices.tunnel.events(s.stop):
                if not s.stop.is_set():
                    self.post(ev.TunnelDown(self.now(), s.number, down.reason))
                return
        except TunnelError as exc:
            if not s.stop.is_set():
                self.post(ev.TunnelDown(self.now(), s.number, f"watch failed: {type(exc).__name__}"))

    def _prepare_print_service(self, s: Session) -> None:
        """Mount the session tmpfs and start the session cupsd in it (on the preparer thread). The
        device firewall, installed at daemon start, lets its port in through IPsec only."""
        t0 = time.monotonic()
        self.devices.session_fs.mount()
        s.print_service = self.devices.print_service()
        s.print_service.start()
        self.devices.remember_engine_model(s.print_service)
        journal.record("print service started", session=s.number, ms=round((time.monotonic() - t0) * 1000, 1),
                       queues="written" if s.print_service.model else "built from the engine")

    def _start_print_service(self, e: fx.StartPrintService) -> None:
        s = self._current(e.session)
        if s is None:
            self.post(ev.PrintServiceFailed(self.now(), e.session, "no session"))
            return
        try:
            s.print_service_ready.result(timeout=PRINT_SERVICE_START_S)  # started in _fetch_profile
        except Exception as exc:
            self.devices.forget_engine_model()
            self.post(ev.PrintServiceFailed(self.now(), e.session, type(exc).__name__))
            return
        self.watchers.submit(self._watch_jobs, s)
        self.post(ev.PrintServiceUp(self.now(), e.session))

    def _watch_jobs(self, s: Session) -> None:
        try:
            for job_event in s.print_service.events(s.stop):
                match job_event:
                    case JobHeld(job=job):
                        proof = owner_proof.check(job, s.print_service.document_path(job.id), org=s.org,
                                                  desk_keys=s.desk_keys, nonces=self.proof_nonces, now=time.time(),
                                                  released=self.released)
                        s.jobs[job.id] = {"title": job.title, "bytes": job.size_bytes, "format": job.document_format,
                                          "delivery": proof.delivery}
                        self.post(ev.JobArrived(self.now(), s.number, job.id, job.user, job.origin_host, proof.verdict))
                    case JobGone(job_id=job_id, reason=reason):
                        self.post(ev.JobGone(self.now(), s.number, job_id, reason))
        except Exception as exc:
            if not s.stop.is_set():
                journal.record("job watch failed", level=40, error=type(exc).__name__, org=s.org)

    def _release(self, e: fx.ReleaseJobs) -> None:
        """Hand each job over to the engine spool (its document copied, the job purged from the
        session cupsd): from here on it no longer depends on the session."""
        s = self._current(e.session)
        done: list[int] = []
        try:
            for job_id in e.job_ids:
                info = s.jobs.get(job_id, {})
                self.devices.engine.take_held(s.print_service, job_id, session=s.number, org=s.org, user=e.user,
                                              title=info.get("title", ""), document_format=info.get("format", ""))
                done.append(job_id)
        except Exception as exc:
            self.post(ev.ReleaseFailed(self.now(), e.session, tuple(j for j in e.job_ids if j not in done),
                                       type(exc).__name__))
            return
        self.post(ev.Released(self.now(), e.session, tuple(done)))

    def _report_jobs(self, e: fx.ReportJobs) -> None:
        """Tell the org's gateway agent what became of these jobs (by delivery id); a released one is
        also recorded on the device, so its redelivery never prints twice."""
        s = self._current(e.session)
        if s is None:
            return
        deliveries = [d for j in e.job_ids if (d := s.jobs.get(j, {}).get("delivery"))]
        if e.state == "released":
            for d in deliveries:
                self.released.add(d)
        if not deliveries or not s.outcomes_url:
            return
        try:
            outcomes.report(s.outcomes_url, [(d, e.state) for d in deliveries])
        except (outcomes.OutcomeError, ValueError) as exc:
            journal.record("outcomes not reported", level=30, org=s.org, state=e.state, jobs=len(deliveries),
                           error=str(exc))
            return
        journal.record("outcomes reported", org=s.org, state=e.state, jobs=len(deliveries))

    def _engine_outcome(self, outcome: EngineOutcome) -> None:
        """How a released job ended at the engine (on the engine's thread): journalled whatever became
        of its session, and told to the machine (its session's `printing` list)."""
        job = outcome.job
        journal.record("engine job", org=job.org, session=job.session, job=job.job_id, state=outcome.state,
                       printed=outcome.printed, reason=outcome.reason)
        if outcome.printed:
            self.post(ev.JobPrinted(self.now(), job.session, job.job_id))
        else:
            self.post(ev.JobGone(self.now(), job.session, job.job_id, f"not printed: {outcome.state} {outcome.reason}".strip()))

    def _purge_job(self, e: fx.PurgeJob) -> None:
        s = self._current(e.session)
        if s is not None and s.print_service is not None:
            s.print_service.purge(e.job_id)

    def _purge(self, e: fx.Purge) -> None:
        incoming, self.incoming = self.incoming, None
        if incoming is not None and not e.keep_next:
            self._end_keeper(incoming)  # a lookup the purge makes moot
            incoming = None
        if self.session is not None:
            self._end_keeper(self.session)  # first: every secret of the session dies with it
            if self.session.print_service_ready is not None:
                # a print service still starting would come up after the purge stopped it
                concurrent.futures.wait([self.session.print_service_ready], timeout=PRINT_SERVICE_START_S)
        report = purge(self.devices, self.session, e.reason)
        self.session = incoming  # the org the machine switches to, when it decided so
        self.post(ev.PurgeDone(self.now(), e.session, report.ok, report.leftovers))

    def _authenticate(self, e: fx.Authenticate) -> None:
        s = self._current(e.session)
        at = self.now
        if s is None or s.keeper is None:
            self.post(ev.AuthUnavailable(at(), e.session, e.attempt, "no session"))
            return
        try:
            r = s.keeper.authenticate(60, user=e.user, org=e.org, pin=e.pin, state=e.state)
        except KeeperError as exc:
            self.post(ev.AuthUnavailable(at(), e.session, e.attempt, str(exc)))
            return
        finally:
            if e.pin is not None:
                e.pin.wipe()
        match r:
            case Accepted(user=user):
                self.post(ev.AuthAccepted(at(), e.session, e.attempt, user))
            case Rejected(user=user, message=message):
                self.post(ev.AuthRejected(at(), e.session, e.attempt, user, message))
            case PinRequired(user=user, challenge=challenge, prompt=prompt):
                self.post(ev.AuthPinRequired(at(), e.session, e.attempt, user, challenge, prompt))
            case BadInput(reason=reason):
                self.post(ev.AuthRejected(at(), e.session, e.attempt, e.user, reason))
            case Unavailable(reason=reason):
                self.post(ev.AuthUnavailable(at(), e.session, e.attempt, reason))

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
                                                    mask_uid(card_event.uid), pin_locked=locked))
                        case CardUnreadable(error=error):
                            self.post(ev.CardUnreadable(self.now(), _card_kind(error)))
            except Exception as exc:  # the reader is retried: the daemon keeps running
                journal.record("card reader failed", level=40, error=f"{type(exc).__name__}: {exc}")
                self.panel = "Card reader unavailable — call the operator"
                await asyncio.sleep(2)

    async def _tick(self) -> None:
        interval = sdnotify.watchdog_interval()
        last_ping = 0.0
        while not self.done.is_set():
            await asyncio.sleep(TICK_S)
            self.post(ev.Tick(self.now()))
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

    def _pin(self, pin: ev.Pin) -> dict:
        """A PIN from the panel (`status` hands it over as bytes): to the authentication that waits
        for it, or wiped."""
        state = self.state
        if not machine.pin_open(state, self.now(), self.limits):
            pin.wipe()
            return {"error": "no PIN is being asked for"}
        self.post(ev.PinEntered(self.now(), state.session, pin))
        return {"ok": True}

    def snapshot(self) -> dict:
        view = describe(self.state)
        s = self.session
        held = [dict(j, **(s.jobs.get(j["id"], {}) if s else {})) for j in view.get("held_jobs", [])]
        for j in held:
            j.pop("format", None)
            j.pop("delivery", None)
        tunnel = {"up": bool(s and s.virtual_ip and view.get("org")), "virtual_ip": s.virtual_ip if s else None}
        number = getattr(self.state, "session", None)
        printing = [{"id": j.job_id, "user": j.user, "title": j.title}
                    for j in self.devices.engine.pending() if j.session == number]
        sessions = {}
        if isinstance(self.state, machine.ORG_BEARING):
            sessions[view["org"]] = {"state": view["state"], "tunnel": tunnel, "held_jobs": held,
                                     "printing": printing, "authenticated_user": view.get("authenticated_user")}
        return {
            "state": view["state"],
            "org": view.get("org"),
            "panel": self.panel,
            "pin_requested": machine.pin_open(self.state, self.now(), self.limits),
            "taps": self.taps,
            "tunnel": tunnel,
            "held_jobs": held,
            "printing": printing,
            "authenticated_user": view.get("authenticated_user"),
            "sessions": sessions,
            "engine": self.devices.engine.view(),
            "leftovers": view.get("leftovers", []),
            "audit": list(self.audit)[-30:],
        }

    # -- main ----------------------------------------------------------------------------------

    def _start_route_window(self) -> None:
        """Widen the tunnel routes' initial TCP window (one round trip less for a desk's first
        exchange). Only speed depends on it: a failure is journalled and the daemon goes on."""
        if self.devices.route_window is None:
            return
        try:
            self.devices.route_window.start()
        except (NetError, ValueError) as exc:
            journal.record("route window not set", level=30, error=str(exc))

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        server = await status.serve(self.cfg.runtime.status_socket, self._control, self._pin)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, lambda: self.post(ev.Shutdown(self.now())))
        tasks = [asyncio.create_task(self._read_cards()), asyncio.create_task(self._tick())]
        engine_thread = threading.Thread(target=self._serve_engine, name="engine", daemon=True)
        engine_thread.start()
        self._start_route_window()
        # The device firewall and the kernel's network settings hold before anything else: if not,
        # the boot purge's check finds it and latches Fault (no session), the daemon stays up.
        try:
            self.devices.firewall.install()
        except NetError as exc:
            journal.record("device firewall not installed: no sessions", level=50, error=str(exc))
        if wrong := self.devices.network_leftovers(gateways=False):
            journal.record("device network not as required: no sessions", level=50, found="; ".join(wrong))
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
            sdnotify.notify("STOPPING=1")
            self.engine_stop.set()  # a job still spooled is printed after the next start
            self.devices.engine.stop_waiting()
            for t in tasks:
                t.cancel()
            await self.devices.card.close()
            server.close()
            self.session_worker.shutdown(wait=True)
            self.preparer.shutdown(wait=True)
            if self.spare_keeper is not None:
                self.spare_keeper.stop()
            if self.devices.route_window is not None:
                self.devices.route_window.stop()
            self.auth_worker.shutdown(wait=False, cancel_futures=True)
            self.watchers.shutdown(wait=False, cancel_futures=True)


def run_daemon(cfg: FirmwareConfig) -> int:
    journal.setup()
    journal.record("starting", device=cfg.device.device_id or "unenrolled", card=cfg.card.kind,
                   tunnel=cfg.tunnel.backend)
    runtime = Runtime(cfg, build(cfg))
    asyncio.run(runtime.run())
    journal.record("stopped")
    return 0
