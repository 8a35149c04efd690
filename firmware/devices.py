"""The device's hardware and services, built from the configuration: the only place that chooses
implementations. The runtime and the purge use these objects and nothing else of the hal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from firmware.config import FirmwareConfig
from firmware.session_fs import SessionFs
from hal.auth import Authenticator, open_authenticator
from hal.card import CardReader, open_reader
from hal.directory import Directory, DirectoryRefused
from hal.directory.profile import AuthServerProfile
from hal.net.firewall import Firewall
from hal.printer import cupsd as session_cupsd
from hal.tunnel import Tunnel, TunnelConfig, open_tunnel


class NotEnrolled(DirectoryRefused):
    """The device has no enrolment record: nothing can be looked up until it is enrolled."""

    def __init__(self):
        super().__init__("this device is not enrolled", 401)


@dataclass
class Devices:
    config: FirmwareConfig
    card: CardReader
    directory: Directory
    tunnel: Tunnel
    firewall: Firewall
    session_fs: SessionFs

    @property
    def session_dir(self) -> Path:
        return self.session_fs.path

    def print_service(self, virtual_ip: str):
        """A session print service in the session tmpfs, listening on the virtual IP only."""
        return session_cupsd.SessionPrintService(
            self.session_dir, listen=[f"{virtual_ip}:{self.config.session.ipp_port}"],
            engine_uri=self.config.printer.engine_uri)

    def authenticator(self, auth: AuthServerProfile) -> Authenticator:
        return open_authenticator(auth)

    def stop_stale_print_service(self) -> None:
        """Stop a session cupsd a crashed firmware left running (found by its pid file)."""
        session_cupsd.stop_stale(self.session_dir)

    def stale_print_service_leftovers(self) -> list[str]:
        return session_cupsd.stale_leftovers(self.session_dir)


class _Unenrolled:
    def fetch_profile(self, org_id: str):
        raise NotEnrolled()


def build(cfg: FirmwareConfig) -> Devices:
    options = {"reader_filter": cfg.card.reader} if cfg.card.kind == "pcsc" else {"path": cfg.card.nfc_path}
    if cfg.card.kind == "pcsc" and not cfg.card.reader:
        options = {}
    if cfg.device.device_id and cfg.cloud.url:
        from hal.directory.client import KEY_FILE, DirectoryClient

        directory: Directory = DirectoryClient(
            cfg.cloud.url, cfg.device.device_id, Path(cfg.device.state_dir) / KEY_FILE,
            cfg.cloud.ca_file or None, timeout=cfg.cloud.timeout_s)
    else:
        directory = _Unenrolled()
    backend = None if cfg.tunnel.backend == "auto" else cfg.tunnel.backend
    tunnel = open_tunnel(TunnelConfig(backend=backend, vici_socket=cfg.tunnel.vici_socket))
    return Devices(
        config=cfg,
        card=open_reader(cfg.card.kind, **options),
        directory=directory,
        tunnel=tunnel,
        firewall=Firewall(tunnel.backend, port=cfg.session.ipp_port),
        session_fs=SessionFs(cfg.session.tmpfs_dir, cfg.session.tmpfs_size_mb),
    )
