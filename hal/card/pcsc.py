"""The PC/SC card reader (pyscard over pcscd).

A thread runs its own `SCardGetStatusChange` loop (not pyscard's CardMonitor, which dies for good
when pcscd restarts). When the service goes away (pcscd stopped or restarted) the loop releases
its context and establishes a new one as soon as pcscd answers again; readers that had a card get
a `CardRemoved` (their state is unknown until then) and a card still on the reader is read again.
A card that appears is read at once over the same thread: the UID with `FF CA 00 00 00`, then, by
the ATR (`hal.card.atr`): a Type 2 storage card (Ultralight / NTAG) through `FF B0 00 <page> 10`
READ BINARY (`hal.card.type2`), an ISO 14443-4 card's NFC Forum Type 4 NDEF application with
bounded reads (`hal.card.type4`), decoded strictly. MIFARE Classic and FeliCa storage cards are
known by their UID only (no FeliCa pass-through is used). A card without a badge is a `CardUid` when
`uid_cards` is set, else `CardUnreadable` (the default: the firmware does not look UIDs up yet).
Events are handed to the asyncio loop that iterates `events()`.
"""

from __future__ import annotations

import logging
import threading
import time

from hal.card import (KIND_TYPE2, KIND_TYPE4, CardCommunicationError, CardDataError, CardRemoved,
                      CardUnreadable, ReaderUnavailable)
from hal.card import type2
from hal.card.atr import card_kind
from hal.card.tap import card_event, uid_event
from hal.card.threaded import ThreadedReader
from hal.card.type4 import read_card, read_uid

try:
    from smartcard import scard as _sc
except ImportError as exc:  # pragma: no cover - depends on the machine
    _sc = None
    _IMPORT_ERROR = exc

log = logging.getLogger("tenantprint.card.pcsc")

PNP = "\\\\?PnP?\\Notification"


class _ServiceLost(Exception):
    """pcscd is not answering; re-establish the context."""


class PcscReader(ThreadedReader):
    """Options: `reader_filter` (substring of the reader name; None = every reader),
    `poll_ms` (how long one status-change wait may block; bounds `close()` latency if a cancel
    is lost), `reconnect_s` (pause between attempts to reach pcscd), `uid_cards` (a card without a
    badge is a `CardUid`, not `CardUnreadable`)."""

    def __init__(self, reader_filter: str | None = None, poll_ms: int = 1000,
                 reconnect_s: float = 0.2, uid_cards: bool = False):
        if _sc is None:
            raise ReaderUnavailable(f"pyscard is not usable: {_IMPORT_ERROR}")
        self.reader_filter = reader_filter
        self.poll_ms = poll_ms
        self.reconnect_s = reconnect_s
        self.uid_cards = uid_cards
        super().__init__()
        self._ctx = None
        self._ctx_lock = threading.Lock()
        self._outage_logged = False
        self._present: dict[str, int] = {}  # reader -> pcsc-lite event counter when the card came

    def _wake(self) -> None:
        with self._ctx_lock:
            if self._ctx is not None:
                _sc.SCardCancel(self._ctx)

    # -- the monitor thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._session()
            except _ServiceLost as exc:
                for reader in list(self._present):
                    del self._present[reader]
                    self._emit(CardRemoved(reader))
                if not self._outage_logged:
                    log.warning("pcscd unavailable (%s); reconnecting", exc)
                    self._outage_logged = True
                self._set_state(False, f"pcscd not answering: {exc}")
                self._stop.wait(self.reconnect_s)

    def _session(self) -> None:
        hr, ctx = _sc.SCardEstablishContext(_sc.SCARD_SCOPE_USER)
        if hr != _sc.SCARD_S_SUCCESS:
            raise _ServiceLost(_sc.SCardGetErrorMessage(hr))
        with self._ctx_lock:
            self._ctx = ctx
        log.info("connected to pcscd")
        self._outage_logged = False
        try:
            self._watch(ctx)
        finally:
            with self._ctx_lock:
                self._ctx = None
            _sc.SCardReleaseContext(ctx)

    def _list_readers(self, ctx) -> list[str]:
        hr, readers = _sc.SCardListReaders(ctx, [])
        if hr == _sc.SCARD_E_NO_READERS_AVAILABLE:
            self._set_state(False, "no card reader connected")
            return []
        if hr != _sc.SCARD_S_SUCCESS:
            raise _ServiceLost(_sc.SCardGetErrorMessage(hr))
        mine = [r for r in readers if self.reader_filter is None or self.reader_filter in r]
        self._set_state(bool(mine), "" if mine else "no card reader connected")
        return mine

    def _watch(self, ctx) -> None:
        readers = self._list_readers(ctx)
        states: dict[str, int] = {r: _sc.SCARD_STATE_UNAWARE for r in readers}
        pnp_state = _sc.SCARD_STATE_UNAWARE
        while not self._stop.is_set():
            query = [(r, states[r]) for r in readers] + [(PNP, pnp_state)]
            hr, result = _sc.SCardGetStatusChange(ctx, self.poll_ms, query)
            now = time.monotonic()
            if hr in (_sc.SCARD_E_TIMEOUT, _sc.SCARD_E_CANCELLED):
                continue
            if hr != _sc.SCARD_S_SUCCESS:
                raise _ServiceLost(_sc.SCardGetErrorMessage(hr))
            relist = False
            for name, event_state, atr in result:
                if name == PNP:
                    relist = bool(event_state & _sc.SCARD_STATE_CHANGED) and pnp_state != _sc.SCARD_STATE_UNAWARE
                    pnp_state = event_state
                    continue
                if event_state & _sc.SCARD_STATE_CHANGED:
                    self._on_state(ctx, name, event_state, now, bytes(atr or b""))
                states[name] = event_state
            if relist:
                readers = self._list_readers(ctx)
                for gone in set(states) - set(readers):
                    del states[gone]
                    if self._present.pop(gone, None) is not None:
                        self._emit(CardRemoved(gone))
                for new in readers:
                    states.setdefault(new, _sc.SCARD_STATE_UNAWARE)

    def _on_state(self, ctx, reader: str, state: int, detected_at: float, atr: bytes = b"") -> None:
        present = bool(state & _sc.SCARD_STATE_PRESENT) and not state & _sc.SCARD_STATE_MUTE
        counter = state >> 16
        before = self._present.get(reader)
        if present and before == counter:
            return  # a change that is not a new card (in use by us, exclusive, ...)
        if before is not None:
            del self._present[reader]
            self._emit(CardRemoved(reader))
        if present:
            self._present[reader] = counter
            self._read(ctx, reader, detected_at, atr)

    def _read(self, ctx, reader: str, detected_at: float, atr: bytes = b"") -> None:
        hr, hcard, protocol = _sc.SCardConnect(ctx, reader, _sc.SCARD_SHARE_SHARED,
                                               _sc.SCARD_PROTOCOL_T0 | _sc.SCARD_PROTOCOL_T1)
        if hr != _sc.SCARD_S_SUCCESS:
            log.warning("card on %s: connect failed: %s", reader, _sc.SCardGetErrorMessage(hr))
            return

        def transmit(apdu: bytes) -> bytes:
            rc, resp = _sc.SCardTransmit(hcard, protocol, list(apdu))
            if rc != _sc.SCARD_S_SUCCESS:
                raise CardCommunicationError(f"transmit failed: {_sc.SCardGetErrorMessage(rc)}")
            return bytes(resp)

        try:
            event = self._card_event(transmit, reader, detected_at, card_kind(atr))
        finally:
            _sc.SCardDisconnect(hcard, _sc.SCARD_LEAVE_CARD)
        if event is not None:
            self._emit(event)

    def _card_event(self, transmit, reader: str, detected_at: float, kind: str):
        try:
            uid = read_uid(transmit)
        except CardDataError as exc:
            log.info("unreadable card on %s: %s: %s", reader, type(exc).__name__, exc)
            return CardUnreadable(reader, exc)
        except CardCommunicationError as exc:
            log.warning("card on %s: %s (tap again)", reader, exc)
            return None
        if kind == KIND_TYPE2:
            read_page = type2.pcsc_read_page(transmit)
            return card_event(uid, kind, reader, lambda: type2.read_badge(read_page), detected_at,
                              uid_cards=self.uid_cards)
        if kind == KIND_TYPE4:
            return card_event(uid, kind, reader, lambda: read_card(transmit, with_uid=False)[1],
                              detected_at, uid_cards=self.uid_cards)
        return uid_event(uid, kind, reader, detected_at, uid_cards=self.uid_cards)
