"""The nfcpy card reader, for readers nfcpy drives directly (ACR122U, PN533; `udp:` for tests).

nfcpy's own NDEF support is not used: `tag.ndef` loops forever on a Type 4 tag that claims a long
NDEF and returns empty chunks, and it decodes leniently. The tag's raw ISO-DEP `transceive` carries
the same bounded APDU sequence the PC/SC reader sends (`hal.card.type4`), and the octets are decoded
strictly. The UID is the tag's anticollision identifier. Tags that are not Type 4 are unreadable.
"""

from __future__ import annotations

import logging

from hal.card import (CardCommunicationError, CardDataError, CardRemoved, CardTap, CardUnreadable,
                      NoBadge, ReaderUnavailable, mask_uid)
from hal.card.threaded import ThreadedReader
from hal.card.type4 import read_card

log = logging.getLogger("tenantprint.card.nfcpy")


def tag_event(tag, reader: str, detected_at: float = 0.0):
    """The event for a tag nfcpy has just connected (None on a transient communication error)."""
    import nfc.clf
    import nfc.tag

    if getattr(tag, "type", None) != "Type4Tag":
        return CardUnreadable(reader, NoBadge(f"not a Type 4 tag ({getattr(tag, 'type', '?')})"))

    def transmit(apdu: bytes) -> bytes:
        try:
            resp = tag.transceive(apdu)
        except (nfc.tag.TagCommandError, nfc.clf.CommunicationError) as exc:
            raise CardCommunicationError(f"tag exchange failed: {exc}") from None
        if resp is None:
            raise CardCommunicationError("tag did not answer")
        return bytes(resp)

    uid = bytes(tag.identifier)
    try:
        _, badge = read_card(transmit, with_uid=False)
    except CardDataError as exc:
        return CardUnreadable(reader, exc)
    except CardCommunicationError as exc:
        log.warning("tag %s on %s: %s (tap again)", mask_uid(uid), reader, exc)
        return None
    return CardTap(uid, badge.user_id, badge.org_id, reader, detected_at=detected_at)


class NfcpyReader(ThreadedReader):
    """Options: `path` (nfcpy device path: `usb`, `usb:072f:2200`, `tty:USB0`, `udp:host:port`),
    `reopen_s` (pause before reopening a device that went away)."""

    def __init__(self, path: str = "usb", reopen_s: float = 1.0):
        super().__init__()
        try:
            import nfc  # noqa: F401
        except ImportError as exc:
            raise ReaderUnavailable(f"nfcpy is not usable: {exc}") from None
        self.path = path
        self.reopen_s = reopen_s

    def _open(self):
        import nfc
        try:
            return nfc.ContactlessFrontend(self.path)
        except (IOError, OSError) as exc:
            raise ReaderUnavailable(f"cannot open NFC reader {self.path!r}: {exc}") from None

    def _run(self) -> None:
        import time
        clf = self._open()  # the first open failing is permanent: wrong path or no device
        try:
            while not self._stop.is_set():
                tapped: list = []

                def on_connect(tag) -> bool:
                    event = tag_event(tag, self.path, time.monotonic())
                    if event is not None:
                        self._emit(event)
                        tapped.append(event)
                    return True  # hold until the tag leaves

                try:
                    clf.connect(rdwr={"on-connect": on_connect, "beep-on-connect": False},
                                terminate=self._stop.is_set)
                except (IOError, OSError) as exc:
                    log.warning("NFC reader %s failed: %s; reopening", self.path, exc)
                    clf.close()
                    clf = self._reopen()
                    if clf is None:
                        return
                    continue
                if tapped:
                    self._emit(CardRemoved(self.path))
        finally:
            if clf is not None:
                clf.close()

    def _reopen(self):
        """Reopen a device that went away (unplugged, USB reset) until it is back or we stop."""
        while not self._stop.wait(self.reopen_s):
            try:
                return self._open()
            except ReaderUnavailable as exc:
                log.debug("still cannot reopen: %s", exc)
        return None
