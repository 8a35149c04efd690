"""The device's hardware and services, built from the configuration: the only place that chooses
implementations. The runtime and the purge use these objects and nothing else of the hal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from firmware.config import FirmwareConfig
from firmware.session_fs import SessionFs
from hal.card import CardReader, open_reader
from hal.card.multi import MultiReader
from hal.directory import Directory, DirectoryRefused
from hal.net import FirewallError, NetError, sysctls
from hal.net.firewall import Firewall
from hal.net.route_window import RouteWindow
from hal.printer import cupsd as session_cupsd
from hal.printer import EngineUnavailable
from hal.printer.driver_engine import DriverQueue
from hal.printer.engine import PrintEngine
from hal.printer.engine_finder import AUTO
from hal.tunnel import Tunnel, TunnelConfig, open_tunnel


# The engine's capabilities can change while the daemon runs (a tray or a duplex unit fitted, the
# printer swapped): a model older than this is built again from the engine.
ENGINE_MODEL_MAX_AGE_S = 3600.0
DRIVER_QUEUE_DIR = "/run/tenantprint/driver-cupsd"  # device data: the cupsd of a printer that needs a driver


class NotEnrolled(DirectoryRefused):
    """The device has no enrolment record: nothing can be looked up until it is enrolled."""

    def __init__(self):
        super().__init__("this device is not enrolled", 401)


@dataclass
class Devices:
    """What the daemon itself drives. Nothing here holds an org secret: those live in the session's
    secret keeper process (`firmware/secret_keeper.py`), which builds its own directory client and
    tunnel loader with `build_directory` / `build_tunnel`."""

    config: FirmwareConfig
    card: CardReader
    tunnel: Tunnel
    firewall: Firewall
    session_fs: SessionFs
    engine: PrintEngine | None = None  # the device's printer and its spool of released jobs
    route_window: RouteWindow | None = None  # widens the tunnel routes' initial TCP window
    # The inbound queue's PPD as the last session's cupsd built it from the engine: device data, no
    # org's. Kept in memory only; the next session's cupsd starts with its queues written from it.
    engine_model: bytes | None = None
    engine_model_at: float = 0.0
    driver_queue: DriverQueue | None = None  # the device's cupsd for a printer that needs a driver

    @property
    def session_dir(self) -> Path:
        return self.session_fs.path

    def print_service(self):
        """A session print service in the session tmpfs, on the IPP port of every address.

        It starts before the tunnel gives the virtual IP (so that it is ready when IKE is done),
        hence the wildcard: the device firewall, installed and verified when the daemon started,
        admits the port from loopback and through IPsec only, and the machine takes a job only from
        inside the tunnel's remote traffic selectors."""
        fresh = time.monotonic() - self.engine_model_at < ENGINE_MODEL_MAX_AGE_S
        if self.driver_queue is not None:  # the driver's PPD is the model: nothing to ask a printer
            model = self.driver_queue.model()
            if model is None:
                raise EngineUnavailable("the driver printer's queue is not set up")
            self.engine_model, self.engine_model_at, fresh = model, time.monotonic(), True
        if self.engine.uri == AUTO:  # no USB printer found yet: the queue has no model to take
            raise EngineUnavailable("printer not connected")
        return session_cupsd.SessionPrintService(
            self.session_dir, listen=[f"0.0.0.0:{self.config.session.ipp_port}"],
            engine_uri=self.engine.uri, engine_model=self.engine_model if fresh else None)

    def remember_engine_model(self, service) -> None:
        """After a start that built the model from the engine, keep it for the next sessions."""
        if service.model is None and (model := service.engine_model()) is not None:
            self.engine_model, self.engine_model_at = model, time.monotonic()

    def forget_engine_model(self) -> None:
        """A start or a release failed: the next session asks the engine again."""
        self.engine_model, self.engine_model_at = None, 0.0

    def network_leftovers(self, *, gateways: bool = True) -> list[str]:
        """How the device's network differs from its policy (empty when it holds): the firewall
        table missing or changed, a gateway still in its set (unless `gateways` is False: at start,
        before the boot purge ends a crashed daemon's tunnel), a kernel setting (sysctl) off."""
        left: list[str] = []
        try:
            kept = self.firewall.verify()
            left += [f"firewall gateway {g}" for g in sorted(kept)] if gateways else []
        except FirewallError as exc:
            left.append(f"device firewall: {exc}")
        try:
            left += [f"sysctl {m}" for m in sysctls.mismatches(self.firewall.netns)]
        except NetError as exc:
            left.append(f"sysctls unknown: {exc}")
        return left

    def stop_stale_print_service(self) -> None:
        """Stop a session cupsd a crashed firmware left running (found by its pid file)."""
        session_cupsd.stop_stale(self.session_dir)

    def stale_print_service_leftovers(self) -> list[str]:
        return session_cupsd.stale_leftovers(self.session_dir)


class _Unenrolled:
    def fetch_profile(self, org_id: str):
        raise NotEnrolled()

    def card_org(self, card: str):
        raise NotEnrolled()


def build_directory(cfg: FirmwareConfig) -> Directory:
    if not (cfg.device.device_id and cfg.cloud.url):
        return _Unenrolled()
    from hal.directory.client import KEY_FILE, DirectoryClient

    return DirectoryClient(cfg.cloud.url, cfg.device.device_id, Path(cfg.device.state_dir) / KEY_FILE,
                           cfg.cloud.ca_file or None, timeout=cfg.cloud.timeout_s,
                           keepalive_s=max(5.0, cfg.cloud.keep_warm_s + 10), max_connections=1)


def build_tunnel(cfg: FirmwareConfig) -> Tunnel:
    backend = None if cfg.tunnel.backend == "auto" else cfg.tunnel.backend
    return open_tunnel(TunnelConfig(backend=backend, vici_socket=cfg.tunnel.vici_socket))


def build_card_reader(cfg: FirmwareConfig) -> CardReader:
    """The configured reader, or every configured reader as one (`hal.card.multi`). Cards without a
    badge are reported by their UID (`CardUid`): the firmware looks them up."""
    readers = []
    for kind in cfg.card.kind.split(","):
        if kind == "pcsc":
            options = {"reader_filter": cfg.card.reader} if cfg.card.reader else {}
            readers.append(open_reader("pcsc", uid_cards=True, **options))
        elif kind == "nfcpy":
            readers.append(open_reader("nfcpy", path=cfg.card.nfc_path))
        else:
            readers.append(open_reader("wedge", device=cfg.card.wedge_device, name=cfg.card.wedge_name))
    return readers[0] if len(readers) == 1 else MultiReader(readers)


def build(cfg: FirmwareConfig) -> Devices:
    tunnel = build_tunnel(cfg)
    driver_queue = None
    if cfg.printer.driver:  # the device's own cupsd drives the printer; the engine is its queue
        driver_queue = DriverQueue(DRIVER_QUEUE_DIR, cfg.printer.engine_uri, cfg.printer.driver)
        engine = PrintEngine(driver_queue.uri, cfg.printer.spool_dir, give_up_s=cfg.printer.engine_give_up_s,
                             unix_socket=str(driver_queue.socket_path), keeper=driver_queue.ensure)
    else:
        engine = PrintEngine(cfg.printer.engine_uri, cfg.printer.spool_dir, give_up_s=cfg.printer.engine_give_up_s)
    return Devices(
        config=cfg,
        card=build_card_reader(cfg),
        tunnel=tunnel,
        firewall=Firewall(tunnel.backend, port=cfg.session.ipp_port, management=cfg.firewall.management),
        session_fs=SessionFs(cfg.session.tmpfs_dir, cfg.session.tmpfs_size_mb),
        engine=engine,
        driver_queue=driver_queue,
        route_window=RouteWindow(cfg.tunnel.initcwnd) if cfg.tunnel.initcwnd else None,
    )
