"""hal/panel/web_feed: one long-poll loop to the firmware, shared by every browser.

A thread asks the panel socket `wait(after=<version>)` over and over; every change it sees (a new
document, the firmware going away or coming back, the language) makes a new `Snapshot` with a
generation number one higher, rendered once (`web_view.render`) and serialized once. Browsers'
event streams block in `wait(after=<generation>)` and send each snapshot they have not sent.

Language (`set_lang`): one current language for the whole service, not one per browser. The panel
is one physical display (the kiosk browser is the person's screen; any other browser on the
device's loopback is a mirror of it, for the lab or an operator), so what the person chose is what
every view of the panel shows, it survives a reload of the kiosk page, and the page keeps no state
of its own that would need purging. The choice lasts while the person's session lasts: when the
session the choice was made in ends (the screen's session changes), the device's default language
(`lang` of the screen document, config `panel.language`) comes back for the next person. A choice
made on the idle screen goes with the session the next tap starts.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass

from hal.panel import web_view
from hal.panel.client import PanelClient, PanelError

log = logging.getLogger("tenantprint.panel.web")


@dataclass(frozen=True)
class Snapshot:
    generation: int
    doc: dict | None          # the firmware's screen document; None while it is not there
    view: dict                # what the page shows (web_view.render)
    data: bytes               # the view as JSON, as every browser gets it


class ScreenFeed:
    """The latest screen, kept up to date by one thread; `wait` for the next one."""

    def __init__(self, client: PanelClient, wait_s: float = 20.0, retry_s: float = 1.0):
        self._client, self._wait_s, self._retry_s = client, wait_s, retry_s
        self._changed = threading.Condition()
        self._stopped = threading.Event()
        self._lang: str | None = None           # the person's choice, None: the device's default
        self._lang_session: int | None = None   # the session the choice was made in
        self._snapshot = self._make(0, None)
        self._thread = threading.Thread(target=self._run, name="panel-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 0.0) -> None:
        """Stop the loop; it ends once its current long poll returns (join up to `timeout`)."""
        self._stopped.set()
        with self._changed:
            self._changed.notify_all()
        if timeout and self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def current(self) -> Snapshot:
        with self._changed:
            return self._snapshot

    def wait(self, after: int, timeout: float) -> Snapshot:
        """The first snapshot whose generation is not `after`, or the current one at the timeout."""
        with self._changed:
            self._changed.wait_for(lambda: self._snapshot.generation != after or self._stopped.is_set(),
                                   timeout)
            return self._snapshot

    def set_lang(self, lang: str) -> Snapshot:
        with self._changed:
            self._lang = lang
            self._lang_session = (self._snapshot.doc or {}).get("session")
            return self._publish(self._snapshot.doc, force=True)

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        after: int | None = None
        while not self._stopped.is_set():
            try:
                doc = self._client.screen() if after is None else self._client.wait(after, self._wait_s)
            except PanelError as exc:
                if self.current().doc is not None or self.current().generation == 0:
                    log.warning("panel socket: %s", exc)
                with self._changed:
                    self._publish(None)
                after = None
                self._stopped.wait(self._retry_s)
                continue
            after = doc["version"]
            with self._changed:
                self._publish(doc)

    def _publish(self, doc: dict | None, force: bool = False) -> Snapshot:
        """Make `doc` the current screen (the caller holds the lock)."""
        old = self._snapshot
        if not force and old.generation > 0 and doc == old.doc:
            return old
        session = None if doc is None else doc.get("session")
        if doc is not None and self._lang is not None and session != self._lang_session:
            if self._lang_session is None:
                self._lang_session = session  # chosen before the tap: the choice goes with that session
            else:
                self._lang = self._lang_session = None  # the person who chose has gone
        self._snapshot = self._make(old.generation + 1, doc)
        self._changed.notify_all()
        return self._snapshot

    def _make(self, generation: int, doc: dict | None) -> Snapshot:
        lang = self._lang or (doc or {}).get("lang") or "en"
        view = web_view.render(doc, lang)
        return Snapshot(generation, doc, view, json.dumps(view, ensure_ascii=False).encode())
