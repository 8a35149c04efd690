"""The device's directory client, built from the configuration (the cloud's org and card lookups).

Light on purpose: the secret keeper imports it, and every module a keeper imports is paid in memory
once per open session (the keeper is a process per session).
"""

from __future__ import annotations

from pathlib import Path

from firmware.config import FirmwareConfig
from hal.directory import Directory, DirectoryRefused


class NotEnrolled(DirectoryRefused):
    """The device has no enrolment record: nothing can be looked up until it is enrolled."""

    def __init__(self):
        super().__init__("this device is not enrolled", 401)


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
