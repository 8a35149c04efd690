"""The asyncio side shared by readers whose blocking library runs in a thread.

A subclass implements `_run()` (the thread body: watch the reader until `self._stop` is set,
calling `self._emit(event)`) and `_wake()` (make a blocking wait in `_run` return soon), and keeps
`reader_state()` current with `_set_state`. An exception escaping `_run` ends `events()` with
`ReaderUnavailable`; `events()` may then be iterated again, which starts a new thread.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import threading
from typing import AsyncIterator

from hal.card import CardEvent, CardReader, ReaderUnavailable

log = logging.getLogger("tenantprint.card")
_CLOSED = object()


class ThreadedReader(CardReader):
    join_timeout_s = 3.0
    _failed = False

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._queue: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state_lock = threading.Lock()
        self._state = {"connected": False, "problem": ""}

    def _set_state(self, connected: bool, problem: str) -> None:
        with self._state_lock:
            self._state = {"connected": connected, "problem": problem}

    def reader_state(self) -> dict:
        with self._state_lock:
            return dict(self._state)

    @abc.abstractmethod
    def _run(self) -> None: ...

    def _wake(self) -> None:
        """Interrupt a blocking wait of the thread (default: nothing; the wait times out)."""

    async def events(self) -> AsyncIterator[CardEvent]:
        if self._thread is not None and self._thread.is_alive():
            if not self._failed:
                raise RuntimeError("events() is already being iterated")
            await asyncio.to_thread(self._thread.join, self.join_timeout_s)  # it is ending
        if self._stop.is_set():
            return
        self._failed = False
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._thread = threading.Thread(target=self._guarded_run, name=type(self).__name__, daemon=True)
        self._thread.start()
        while True:
            item = await self._queue.get()
            if item is _CLOSED:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, self.join_timeout_s)
        self._emit(_CLOSED)

    def _emit(self, item) -> None:
        if self._loop is None or self._queue is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def _guarded_run(self) -> None:
        try:
            self._run()
        except ReaderUnavailable as exc:
            self._failed = True
            self._set_state(False, str(exc))
            self._emit(exc)
        except Exception as exc:  # a bug or a broken library: permanent
            log.exception("card reader thread failed")
            err = ReaderUnavailable(f"card reader failed: {type(exc).__name__}: {exc}")
            err.__cause__ = exc
            self._failed = True
            self._set_state(False, str(err))
            self._emit(err)
