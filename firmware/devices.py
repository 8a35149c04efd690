"""The device's hardware and services, built from the configuration: the only place that chooses
implementations. The runtime and the purge use these objects and nothing else of the hal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from firmware.config import FirmwareConfig
from firmware.session_fs import SessionFs
from hal.card import CardReader, open_reader
from hal.directory import Directory, DirectoryRefused
from hal.net.firewall import Firewall
from hal.net.route_window import RouteWindow
from hal.printer import cupsd as session_cupsd
from hal.tunnel import Tunnel, TunnelConfig, open_tunnel


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
    route_window: RouteWindow | None = None  # widens the tunnel routes' initial TCP window

    @property
    def session_dir(self) -> Path:
        return self.session_fs.path

    def print_service(self):
        """A session print service in the session tmpfs, on the IPP port of every address.

        It starts before the tunnel gives the virtual IP (so that it is ready when IKE is done),
        hence the wildcard: the firewall table, installed and verified before it starts and removed
        only after it stopped, admits the port from loopback and through IPsec only, and the machine
        takes a job only from inside the tunnel's remote traffic selectors."""
        return session_cupsd.SessionPrintService(
            self.session_dir, listen=[f"0.0.0.0:{self.config.session.ipp_port}"],
            engine_uri=self.config.printer.engine_uri)

    def stop_stale_print_service(self) -> None:
        """Stop a session cupsd a crashed firmware left running (found by its pid file)."""
        session_cupsd.stop_stale(self.session_dir)

    def stale_print_service_leftovers(self) -> list[str]:
        return session_cupsd.stale_leftovers(self.session_dir)


class _Unenrolled:
    def fetch_profile(self, org_id: str):
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


def build(cfg: FirmwareConfig) -> Devices:
    options = {"reader_filter": cfg.card.reader} if cfg.card.kind == "pcsc" else {"path": cfg.card.nfc_path}
    if cfg.card.kind == "pcsc" and not cfg.card.reader:
        options = {}
    tunnel = build_tunnel(cfg)
    return Devices(
        config=cfg,
        card=open_reader(cfg.card.kind, **options),
        tunnel=tunnel,
        firewall=Firewall(tunnel.backend, port=cfg.session.ipp_port),
        session_fs=SessionFs(cfg.session.tmpfs_dir, cfg.session.tmpfs_size_mb),
        route_window=RouteWindow(cfg.tunnel.initcwnd) if cfg.tunnel.initcwnd else None,
    )
