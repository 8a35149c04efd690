"""The nfcpy card reader, for readers nfcpy drives directly (ACR122U, PN533, RC-S380; `udp:` for tests).

nfcpy's own NDEF support is not used: `tag.ndef` loops forever on a Type 4 tag that claims a long
NDEF and returns empty chunks, and it decodes leniently. The tags' raw primitives carry the same
bounded reads the PC/SC reader makes, and the octets are decoded strictly:

- Type 2 (NTAG21x, Ultralight): `Type2Tag.read(page)` under `hal.card.type2` (a NAK makes nfcpy
  re-select the tag, so the card stays usable for the presence check);
- Type 3 (FeliCa Lite-S, system 12FC): `Type3Tag.read_without_encryption` of service 000B under
  `hal.card.type3`; a FeliCa of another system (FeliCa Standard office cards) is known by its IDm;
- Type 4: ISO-DEP `transceive` under `hal.card.type4`.

MIFARE Classic (SAK 08/09/18/88) is known by its UID without a read. The UID is the tag's
anticollision identifier (the IDm for FeliCa). A device that cannot be opened (unplugged, held by a
kernel driver or pcscd) is retried with a backoff of `retry_s` doubling to `retry_max_s`;
`reader_state()` says why it is not connected meanwhile.
"""

from __future__ import annotations

import logging
import time

from hal.card import (KIND_MIFARE_CLASSIC, KIND_TYPE2, KIND_TYPE3, KIND_TYPE4, CardCommunicationError,
                      CardRemoved, CardUnreadable, NoBadge, ReaderUnavailable, TagRefusedRead)
from hal.card import type2, type3
from hal.card.nfc_diagnose import problem, udp_peer_absent
from hal.card.tap import card_event, uid_event
from hal.card.threaded import ThreadedReader
from hal.card.type4 import read_card
from hal.card.writer import nfcpy_transmit

log = logging.getLogger("tenantprint.card.nfcpy")

MIFARE_CLASSIC_SAK = {0x08, 0x09, 0x18, 0x88}
# Sense cycles per `connect()` call: `close()` is seen between calls; over `udp:` with no peer each
# cycle waits nfcpy's 1 s per technology.
SENSE_ITERATIONS, SENSE_INTERVAL_S = 2, 0.1


def _type4_read(tag):
    transmit = nfcpy_transmit(tag)
    return lambda: read_card(transmit, with_uid=False)[1]


def _type2_read(tag):
    import nfc.clf
    import nfc.tag
    from nfc.tag.tt2 import INVALID_PAGE_ERROR

    def read_page(page: int) -> bytes:
        try:
            return bytes(tag.read(page))
        except nfc.tag.TagCommandError as exc:
            if int(exc) == INVALID_PAGE_ERROR:
                raise TagRefusedRead(f"the tag refused to read page {page}") from None
            raise CardCommunicationError(f"reading page {page} failed: {exc}") from None
        except nfc.clf.CommunicationError as exc:
            raise CardCommunicationError(f"reading page {page} failed: {exc}") from None
    return lambda: type2.read_badge(read_page)


def _type3_read(tag):
    import nfc.clf
    import nfc.tag
    from nfc.tag.tt3 import BlockCode, ServiceCode

    service = ServiceCode(type3.NDEF_READ_SERVICE >> 6, type3.NDEF_READ_SERVICE & 0x3F)

    def read_blocks(blocks) -> bytes:
        try:
            return bytes(tag.read_without_encryption([service], [BlockCode(n) for n in blocks]))
        except nfc.tag.TagCommandError as exc:
            if int(exc) > 0xFF:  # the tag's status flags
                raise TagRefusedRead(f"the tag refused the read: status {int(exc):04x}") from None
            raise CardCommunicationError(f"reading blocks failed: {exc}") from None
        except nfc.clf.CommunicationError as exc:
            raise CardCommunicationError(f"reading blocks failed: {exc}") from None
    return lambda: type3.read_badge(read_blocks)


def tag_event(tag, reader: str, detected_at: float = 0.0):
    """The event for a tag nfcpy has just connected (None on a transient communication error)."""
    kind_name = getattr(tag, "type", "?")
    uid = bytes(getattr(tag, "identifier", b""))
    if kind_name == "Type2Tag" and hasattr(tag, "read"):
        sel_res = getattr(getattr(tag, "target", None), "sel_res", None)
        if sel_res and sel_res[0] in MIFARE_CLASSIC_SAK:
            return uid_event(uid, KIND_MIFARE_CLASSIC, reader, detected_at)
        return card_event(uid, KIND_TYPE2, reader, _type2_read(tag), detected_at)
    if kind_name == "Type3Tag" and hasattr(tag, "read_without_encryption"):
        if getattr(tag, "sys", None) != type3.NDEF_SYSTEM_CODE:
            return uid_event(uid, KIND_TYPE3, reader, detected_at)
        return card_event(uid, KIND_TYPE3, reader, _type3_read(tag), detected_at)
    if kind_name == "Type4Tag" and hasattr(tag, "transceive"):
        return card_event(uid, KIND_TYPE4, reader, _type4_read(tag), detected_at)
    # Type 1 tags, and tag objects without the raw primitive this reader needs.
    return CardUnreadable(reader, NoBadge(f"cannot read a {kind_name} tag"))


class NfcpyReader(ThreadedReader):
    """Options: `path` (nfcpy device path: `usb`, `usb:072f:2200`, `tty:USB0:pn532`, `udp:host:port`),
    `retry_s` / `retry_max_s` (backoff between attempts to open the device: doubles up to the max),
    `reopen_s` (an older name for `retry_s`)."""

    def __init__(self, path: str = "usb", retry_s: float = 0.2, retry_max_s: float = 2.0,
                 reopen_s: float | None = None):
        super().__init__()
        try:
            import nfc  # noqa: F401
        except ImportError as exc:
            raise ReaderUnavailable(f"nfcpy is not usable: {exc}") from None
        self.path = path
        self.retry_s = reopen_s if reopen_s is not None else retry_s
        self.retry_max_s = max(retry_max_s, self.retry_s)
        self._set_state(False, "not opened yet")

    def _open(self):
        """The opened frontend, or None if it cannot be opened now (state says why)."""
        import nfc
        try:
            if self.path.startswith("udp") and udp_peer_absent(self.path):
                raise ConnectionRefusedError("nothing listens at the udp peer")
            clf = nfc.ContactlessFrontend(self.path)
        except (IOError, OSError) as exc:
            cause = "udp peer absent" if isinstance(exc, ConnectionRefusedError) else problem(self.path, exc)
            if self.reader_state()["problem"] != cause:
                log.warning("cannot open NFC reader %s: %s (%s); retrying", self.path, cause, exc)
            self._set_state(False, cause)
            return None
        log.info("NFC reader %s open: %s", self.path, clf.device)
        self._set_state(True, "")
        return clf

    def _open_with_backoff(self):
        delay = self.retry_s
        while not self._stop.is_set():
            clf = self._open()
            if clf is not None:
                return clf
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self.retry_max_s)
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            clf = self._open_with_backoff()
            if clf is None:
                return
            try:
                self._serve(clf)
            finally:
                clf.close()

    def _serve(self, clf) -> None:
        """Sense and read tags until the device fails (then return: reopen) or we stop."""
        while not self._stop.is_set():
            tapped: list = []

            def on_connect(tag) -> bool:
                event = tag_event(tag, self.path, time.monotonic())
                if event is not None:
                    self._emit(event)
                    tapped.append(event)
                return True  # hold until the tag leaves

            try:
                result = clf.connect(rdwr={"on-connect": on_connect, "beep-on-connect": False,
                                           "iterations": SENSE_ITERATIONS, "interval": SENSE_INTERVAL_S},
                                     terminate=self._stop.is_set)
            except (IOError, OSError) as exc:
                result, failure = False, exc
            else:
                failure = None
            if tapped:
                self._emit(CardRemoved(self.path))
            if result is False and not self._stop.is_set():
                # nfcpy's connect() logs and returns False when the device fails (unplugged).
                cause = problem(self.path, failure) if failure else "reader stopped answering"
                log.warning("NFC reader %s failed: %s; reopening", self.path, cause)
                self._set_state(False, cause)
                return
