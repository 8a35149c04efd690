"""`python -m bench.card [--runs 20] [--paths pcsc,nfcpy-sim]`: card tap latencies.

pcsc: on the lab's real pcscd + vpcd (Type 4 card):

- decode:  the reader's card-present status change -> the decoded `CardTap` received on the asyncio
           loop (UID + Type 4 NDEF read over PC/SC, strict decode, thread -> loop handoff)
- insert:  `VirtualCard.insert()` called -> `CardTap` received, end to end (includes pcscd's 400 ms
           vpcd poll, so expect it to spread over 0..400 ms)
- removal: `VirtualCard.remove()` called -> `CardRemoved` received (also bounded by the poll)

nfcpy-sim: the real NfcpyReader over nfcpy's `udp` driver against `lab.nfc_sim` (no lab, no root),
for a Type 2 (NTAG213), a Type 3 (FeliCa Lite-S) and a Type 4 card:
- decode:  nfcpy's on-connect (tag activated) -> the decoded `CardTap` on the asyncio loop (the
           bounded NDEF read over UDP, strict decode, thread -> loop handoff). The simulated card
           runs in this process: its Python time and GIL share are in the numbers.
- insert:  the card put on the simulator -> `CardTap` (includes up to 0.1 s of the sense loop's pause)
- removal: the card taken away -> `CardRemoved` (nfcpy's presence check timing out)

The pcsc path uses the lab prefix `TP_LAB_PREFIX` (default `tpcard`); brings the lab up if needed
and down again if it did. Writes bench/results/card.json.
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


def _sim_card(kind: str, message: bytes):
    from hal.card.badge_write import type2_image, type3_blocks, type4_files
    from lab.nfc_sim import Type2Card, Type3Card, Type4Card
    if kind == "type2":
        uid = b"\x04" + os.urandom(6)
        return Type2Card(uid, type2_image(message, uid))
    if kind == "type3":
        return Type3Card(b"\x01\x2e" + os.urandom(6), type3_blocks(message))
    return Type4Card(b"\x04" + os.urandom(6), *type4_files(message))


async def _measure_sim(runs: int) -> dict:
    from hal.card import CardRemoved, CardTap, open_reader
    from hal.card.badge_write import badge_message
    from lab.nfc_sim import NfcSim

    sim = NfcSim().start()
    reader = open_reader("nfcpy", path=sim.path)
    queue: asyncio.Queue = asyncio.Queue()

    async def pump():
        async for event in reader.events():
            await queue.put((time.monotonic(), event))
    task = asyncio.create_task(pump())
    out = {}
    try:
        await asyncio.sleep(0.2)
        for kind in ("type2", "type3", "type4"):
            decode, insert, removal = [], [], []
            for i in range(runs):
                await asyncio.sleep(random.uniform(0, 0.1))
                card = _sim_card(kind, badge_message(f"user{i}", "acme"))
                t0 = time.monotonic()
                sim.present(card)
                got, event = await asyncio.wait_for(queue.get(), 5)
                if not isinstance(event, CardTap) or event.kind != kind:
                    raise RuntimeError(f"expected a {kind} CardTap, got {event!r}")
                decode.append(got - event.detected_at)
                insert.append(got - t0)
                t0 = time.monotonic()
                sim.remove()
                got, event = await asyncio.wait_for(queue.get(), 5)
                if not isinstance(event, CardRemoved):
                    raise RuntimeError(f"expected CardRemoved, got {event!r}")
                removal.append(got - t0)
            out[kind] = {"decode": _stats(decode), "insert": _stats(insert), "removal": _stats(removal)}
    finally:
        await reader.close()
        await task
        sim.stop()
    return out


def _measure_pcsc(runs: int) -> dict:
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
        return asyncio.run(_measure(VirtualCard(lab), runs))
    finally:
        vcard.stop(lab)
        pcscd.stop(lab)
        if not was_up:
            lab.down()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.card")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--paths", default="pcsc,nfcpy-sim", help="comma-separated: pcsc, nfcpy-sim")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "card.json"))
    args = ap.parse_args(argv)
    paths = [p for p in args.paths.split(",") if p]
    results: dict = {}
    if "pcsc" in paths:
        results.update(_measure_pcsc(args.runs))
    if "nfcpy-sim" in paths:
        results["nfcpy_sim"] = asyncio.run(_measure_sim(args.runs))
    out = {"bench": "card", "runs": args.runs, "machine": platform.node(), "python": platform.python_version(),
           "results": results,
           "notes": "pcsc: vpcd has no events: pcscd polls it every 400 ms, so insert/removal include 0-400 ms "
                    "of poll; inserts start at a random phase. nfcpy_sim: the card simulator shares this "
                    "process (and its GIL) with the reader"}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
