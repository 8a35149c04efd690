"""Several readers as one: a device may have an NFC reader and a keyboard-wedge reader, or a PC/SC
reader and an nfcpy one (FeliCa through an RC-S380 beside an ACR1252U). Events of all of them, in
the order they happen; a reader that fails is retried by itself and never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

from hal.card import CardEvent, CardReader, ReaderUnavailable

log = logging.getLogger("tenantprint.hal.card.multi")


class MultiReader(CardReader):
    def __init__(self, readers: list[CardReader], retry_s: float = 2.0):
        if not readers:
            raise ValueError("no card reader")
        self.readers = list(readers)
        self.retry_s = retry_s
        self._closed = asyncio.Event()

    async def _pump(self, reader: CardReader, queue: asyncio.Queue) -> None:
        while not self._closed.is_set():
            try:
                async for event in reader.events():
                    await queue.put(event)
                return
            except ReaderUnavailable as exc:
                log.warning("card reader %s unavailable: %s (retried)", type(reader).__name__, exc)
            except Exception as exc:  # noqa: BLE001 (one reader's bug must not stop the others)
                log.warning("card reader %s failed: %s: %s (retried)", type(reader).__name__, type(exc).__name__, exc)
            try:
                await asyncio.wait_for(self._closed.wait(), self.retry_s)
            except asyncio.TimeoutError:
                pass

    async def events(self) -> AsyncIterator[CardEvent]:
        queue: asyncio.Queue = asyncio.Queue()
        pumps = [asyncio.create_task(self._pump(r, queue)) for r in self.readers]
        try:
            while not self._closed.is_set():
                getter = asyncio.create_task(queue.get())
                closed = asyncio.create_task(self._closed.wait())
                done, _ = await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                closed.cancel()
                if getter in done:
                    yield getter.result()
                else:
                    getter.cancel()
        finally:
            for p in pumps:
                p.cancel()

    async def close(self) -> None:
        self._closed.set()
        for r in self.readers:
            await r.close()

    def reader_state(self) -> dict:
        states = [r.reader_state() for r in self.readers]
        problems = [s["problem"] for s in states if not s["connected"] and s["problem"]]
        return {"connected": all(s["connected"] for s in states), "problem": "; ".join(problems),
                "readers": states}
