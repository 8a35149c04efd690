"""`python -m bench.card [--runs 20]`: card tap latencies on the lab's real pcscd + vpcd.

- decode:  the reader's card-present status change -> the decoded `CardTap` received on the asyncio
           loop (UID + Type 4 NDEF read over PC/SC, strict decode, thread -> loop handoff)
- insert:  `VirtualCard.insert()` called -> `CardTap` received, end to end (includes pcscd's 400 ms
           vpcd poll, so expect it to spread over 0..400 ms)
- removal: `VirtualCard.remove()` called -> `CardRemoved` received (also bounded by the poll)

Uses the lab prefix `TP_LAB_PREFIX` (default `tpcard`); brings the lab up if needed and down again
if it did. Writes bench/results/card.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import time
from pathlib import Path

from bench.stats import summary as _stats


async def _measure(card, runs: int) -> dict:
    from hal.card import CardRemoved, CardTap, open_reader

    reader = open_reader("pcsc", reader_filter="Virtual PCD 00 00")
    queue: asyncio.Queue = asyncio.Queue()

    async def pump():
        async for event in reader.events():
            await queue.put((time.monotonic(), event))
    task = asyncio.create_task(pump())
    decode, insert, removal = [], [], []
    try:
        await asyncio.sleep(0.2)
        for i in range(runs):
            # A random phase against pcscd's 400 ms poll, as a person's tap would have.
            await asyncio.sleep(random.uniform(0, 0.4))
            t0 = time.monotonic()
            await asyncio.to_thread(card.insert, os.urandom(7), f"user{i}", "acme")
            got, event = await asyncio.wait_for(queue.get(), 5)
            if not isinstance(event, CardTap):
                raise RuntimeError(f"expected a CardTap, got {event!r}")
            decode.append(got - event.detected_at)
            insert.append(got - t0)
            t0 = time.monotonic()
            await asyncio.to_thread(card.remove)
            got, event = await asyncio.wait_for(queue.get(), 5)
            if not isinstance(event, CardRemoved):
                raise RuntimeError(f"expected CardRemoved, got {event!r}")
            removal.append(got - t0)
    finally:
        await reader.close()
        await task
    return {"decode": _stats(decode), "insert": _stats(insert), "removal": _stats(removal)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.card")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "card.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("TP_LAB_PREFIX", "tpcard")

    from lab.lab import Lab
    from lab.layout import LabLayout
    from lab.services.pcscd import PcscdService, VcardService, pcsc_socket_env
    from lab.vcard import VirtualCard

    lab = Lab(layout=LabLayout.from_env(), services=[])
    was_up = lab.status()["lab"]["up"]
    lab.up()
    pcscd, vcard = PcscdService(), VcardService()
    try:
        pcscd.start(lab)
        vcard.start(lab)
        os.environ.update(pcsc_socket_env(lab))
        results = asyncio.run(_measure(VirtualCard(lab), args.runs))
    finally:
        vcard.stop(lab)
        pcscd.stop(lab)
        if not was_up:
            lab.down()
    out = {"bench": "card", "runs": args.runs, "machine": platform.node(), "python": platform.python_version(),
           "results": results,
           "notes": "vpcd has no events: pcscd polls it every 400 ms, so insert/removal include 0-400 ms of poll; inserts start at a random phase"}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
