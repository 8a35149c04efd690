"""hal/directory: the MFP's client of the cloud org directory.

The firmware asks the directory for an organization's `SessionProfile` on every tap
(`Directory.fetch_profile`). A card known only by its UID is first mapped to its org through the
space's card directory (`Directory.card_org`, with a card id matching `CARD_ID_RE`). The device
proves who it is with an Ed25519 key made on the device at enrolment (`client.enrol`); requests
are signed as `hal/directory/signing.py` describes. Calls block (httpx): the firmware runs them in
a thread.

Errors (all `DirectoryError`), mapped to panel messages by the firmware:
- `DirectoryUnreachable`: no answer, timeout, TLS failure, 5xx: try again later.
- `DirectoryRefused`: the directory said no (401 the device is not recognised: unknown, revoked,
  clock skew, replay; 403 no contract with that org). `.status` says which.
- `DirectoryMalformed`: an answer that is not a valid profile for the org asked for. Fail closed.
"""

from __future__ import annotations

from typing import Protocol

from hal.card import CARD_ID as CARD_ID_RE  # a card known only by its UID, as the firmware names it
from hal.directory.profile import SessionProfile


class DirectoryError(Exception):
    """Base of the directory client's errors; messages never carry secrets."""


class DirectoryUnreachable(DirectoryError):
    """The directory did not answer usefully (network, TLS, timeout, 5xx)."""


class DirectoryRefused(DirectoryError):
    """The directory refused: 401 (device not recognised) or 403 (no contract / unknown org)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status

    @property
    def device_rejected(self) -> bool:
        """True when the device itself is not accepted (re-enrol or fix the clock)."""
        return self.status == 401


class DirectoryMalformed(DirectoryError):
    """The directory's answer is not a valid profile for the org that was asked for."""


class Directory(Protocol):
    """What the firmware needs from the cloud."""

    def fetch_profile(self, org_id: str) -> SessionProfile:
        """The org's session profile; raises a `DirectoryError`. The caller owns (and wipes) it."""
        ...

    def card_org(self, card: str) -> str:
        """The org id a UID-only card (`CARD_ID_RE`) is registered to in this device's space;
        raises a `DirectoryError` (`DirectoryRefused` 403: not registered here, or the org has no
        contract with the space: the directory does not say which)."""
        ...


__all__ = ["CARD_ID_RE", "Directory", "DirectoryError", "DirectoryUnreachable", "DirectoryRefused",
           "DirectoryMalformed", "SessionProfile"]
