"""What the lab CLI does beyond up/down: tap a card, print, inject faults, scan for secrets, status.

Each function returns a JSON-able dict (the CLI prints it). They act through the real interfaces:
the virtual card behind pcscd, the desk's CUPS, the daemons' own control sockets, PIDs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from lab.host import LabError
from lab.options import PANEL_ACTIONS
from lab.poll import wait_for
from lab.services.firmware import firmware_status, panel_request, type_on_keypad
from lab.sun_cards import default_uid  # noqa: F401  (the benches present cards by it)


def _firmware(lab):
    return lab.service("firmware")


def _vm(lab) -> bool:
    """The MFP is a QEMU guest (`lab up --mfp vm`): lab/services/mfp_vm.py."""
    return getattr(lab.options, "mfp", "netns") == "vm"


def _needs_netns(lab, what: str) -> None:
    if _vm(lab):
        raise LabError(f"{what}: not on the MFP guest (`lab up --mfp vm` has the PC/SC reader and the web panel only)")


def _tunnel_backend(lab, firmware: dict) -> None:
    """`firmware.tunnel.backend`: the firmware's own word when its status says it; else what it was
    told (`tunnel.backend` of its config; `backend_source` says which), detected as the firmware
    would when told `auto`."""
    tunnel = firmware.get("tunnel")
    if not isinstance(tunnel, dict):
        return
    if "backend" in tunnel:
        tunnel.setdefault("backend_source", "firmware")
        return
    if _vm(lab):  # the lab layer's firmware.toml
        tunnel.update(backend="kernel", backend_source="config")
    elif lab.options.tunnel_backend != "auto":
        tunnel.update(backend=lab.options.tunnel_backend, backend_source="config")
    else:
        from hal.tunnel import detect_backend

        tunnel.update(backend=detect_backend(), backend_source="detected")


def status(lab) -> dict:
    from lab.services import engine, org_agents
    from org.desk_agent import trusted_model

    out = lab.status()
    out["firmware"] = _firmware(lab).status(lab)
    _tunnel_backend(lab, out["firmware"])
    out["desks"] = {}
    for org in _contracted(lab):
        try:
            queues = org_agents.desk_queues(lab, org)
        except Exception as exc:  # a desk that is down is reported, not fatal
            out["desks"][org] = {"queue": False, "error": str(exc)}
            continue
        # Registered = a queue the desk agent trusted and opened: a real model, accepting jobs (a
        # queue still being checked is disabled and rejecting).
        registered = any(q["accepting"] and trusted_model(q["model"]) for q in queues.values())
        held, released = org_agents.desk_copies(lab, org)
        out["desks"][org] = {"queue": registered, "queues": queues, "held": held, "released": released,
                             "canceled": org_agents.desk_canceled(lab, org)}
    # The engine's own word (state, reasons, formats, its job list); the service status when the lab
    # runs the engine service, so the engine is asked once.
    eng = out["services"].get("engine")
    out["engine"] = eng if eng and "jobs" in eng else engine.engine_state(lab)
    out["printed"] = engine.printed_documents(lab, engine_jobs=out["engine"]["jobs"]) if lab.host("office").exists() else []
    out["audit"] = out["firmware"].get("audit", [])
    return out


def _contracted(lab) -> tuple[str, ...]:
    from lab.orgs import contracted

    return contracted(lab.options.extra_orgs)


CARD_KINDS = ("type4", "type2", "uid-only", "type3", "wedge")


def tap(lab, org: str, user: str, *, uid: str | None = None, pin: str | None = None,
        ndef_hex: str | None = None, settle_s: float = 60, card_kind: str = "type4", choose: bool = False,
        keypad: bool = False) -> dict:
    """Present the card, wait until the firmware has taken the tap, remove it, wait until it settles
    (and type `pin` on the panel if it asks for one). Returns the firmware's status.

    `card_kind`: `type4` (the NTAG 424 DNA the lab issued the user, `lab.sun_cards`: a fresh SUN
    proof on every read; with another `uid`, a card someone wrote the badge on, without proof),
    `type2` (an NTAG with the badge, no proof), or
    `uid-only` (the user's registered staff card: no badge, known by its UID, `lab.cards`), each
    behind the PC/SC reader; `type3` (a FeliCa Lite-S with the badge) on the nfcpy reader; `wedge`
    (the user's registered proximity badge number, typed by the keyboard-wedge reader).

    `keypad`: the PIN is typed on the MFP's USB keypad (and ENTER) instead of the panel's screen.
    `choose`: touch "Choose my jobs" on the panel first: the tap then lists the person's held jobs
    on the panel instead of printing them all (`lab panel print|delete|logout` go on from there)."""
    from lab.vcard import VirtualCard

    if card_kind not in CARD_KINDS:
        raise LabError(f"--card must be one of {', '.join(CARD_KINDS)}")
    if card_kind in ("type3", "wedge") or keypad:
        _needs_netns(lab, f"--card {card_kind}" if not keypad else "--keypad")
    fw = _firmware(lab)
    before = firmware_status(lab)["taps"]
    if choose:
        panel(lab, "choose-next")
    if card_kind in ("type3", "wedge"):
        _tap_other_reader(lab, card_kind, org, user, uid, before)
        return _after_tap(lab, fw, pin, settle_s, keypad)
    card = VirtualCard(lab)
    if card_kind == "uid-only":
        card.insert(uid or _registered_uid(org, user), no_app=True)
    elif card_kind == "type2":
        card.insert(uid or default_uid(org, user), user=user, org=org, type2=True)
    elif ndef_hex is not None:
        card.insert(uid or default_uid(org, user), ndef=bytes.fromhex(ndef_hex))
    else:
        card.insert(uid or default_uid(org, user), user=user, org=org)
    try:
        wait_for(lambda: firmware_status(lab)["taps"] > before, 10, "the firmware to read the card")
    finally:
        card.remove()
    return _after_tap(lab, fw, pin, settle_s, keypad)


def _tap_other_reader(lab, kind: str, org: str, user: str, uid: str | None, before: int) -> None:
    from lab.services import card_readers

    if kind == "wedge":
        number = uid or _registered_number(org, user)
        card_readers.type_number(lab, number)
        wait_for(lambda: firmware_status(lab)["taps"] > before, 10, "the firmware to read the wedge input")
        return
    card_readers.present(lab, "type3", user=user, org=org, uid_hex=uid)
    try:
        wait_for(lambda: firmware_status(lab)["taps"] > before, 10, "the firmware to read the card")
    finally:
        card_readers.remove(lab)


def _registered_number(org: str, user: str) -> str:
    """The user's registered proximity badge number, else one nobody registered ("Card not registered")."""
    return _registered(org, user, wedge=True) or str(
        int(hashlib.sha256(f"wedge {user}@{org}".encode()).hexdigest()[:8], 16) % 10**8).zfill(8)


def _after_tap(lab, fw, pin: str | None, settle_s: float, keypad: bool = False) -> dict:
    st = fw.wait_settled(lab, timeout=settle_s)
    if st["state"] == "awaiting_pin" and pin is not None:
        # typed on the panel: through the panel socket, as the web panel and the keypad hand it over
        if not pin.isdigit() or not 1 <= len(pin) <= 16:
            raise LabError("--pin: 1 to 16 digits")
        from lab.scan import note_pin_typed

        note_pin_typed(lab, pin)
        if keypad:
            type_on_keypad(lab, pin.encode() + b"\n")
            reply = {}
        else:
            reply = panel_request(lab, {"cmd": "pin", "pin": pin})
        if "error" in reply:
            raise LabError(f"PIN not taken: {reply['error']}")
        wait_for(lambda: not firmware_status(lab)["pin_requested"] or None, 5, "the PIN to be taken")
        wait_for(lambda: firmware_status(lab)["state"] != "awaiting_pin", 15, "the PIN check")
        st = fw.wait_settled(lab, timeout=settle_s)
    return st


def panel(lab, action: str, jobs: list[int] | None = None, settle_s: float = 30) -> dict:
    """Touch the MFP's panel as the person in front of it: `screen` (what it shows now),
    `choose-next`, `print` (the chosen `jobs`, or all), `delete` (`jobs`), `logout`, `pin-cancel`.
    Actions go through the firmware's panel socket with the session number the screen shows (as the
    web panel sends them); returns the screen afterwards."""
    if action not in PANEL_ACTIONS:
        raise LabError(f"panel action must be one of {', '.join(PANEL_ACTIONS)}")
    before = panel_request(lab, {"cmd": "screen"})
    if action == "screen":
        return before
    request: dict = {"cmd": action}
    if action in ("print", "delete", "logout"):
        if before.get("session") is None:
            raise LabError("the panel shows no session")
        request["session"] = before["session"]
    if jobs:
        request["jobs"] = [int(j) for j in jobs]
    elif action == "delete":
        raise LabError("delete: name the jobs (--jobs)")
    reply = panel_request(lab, request)
    if "error" in reply:
        raise LabError(f"panel: {reply['error']}")
    # the machine takes the event on its loop: the screen changes (or, for an action that changes
    # nothing, stays as it was)
    panel_request(lab, {"cmd": "wait", "after": before["version"], "timeout": 2}, timeout=5)
    _firmware(lab).wait_settled(lab, timeout=settle_s)
    return panel_request(lab, {"cmd": "screen"})


def _registered_uid(org: str, user: str) -> str:
    """The UID of the user's registered staff card, else one of theirs nobody registered."""
    return _registered(org, user, wedge=False) or default_uid(org, user)


def _registered(org: str, user: str, *, wedge: bool) -> str | None:
    """The id (without `card-`) of user@org's registered card of that reader kind (`lab/cards.py`;
    a wedge badge's is a short number), or None."""
    from lab.cards import LAB_CARDS

    for ident, owner in LAB_CARDS.items():
        tail = ident.removeprefix("card-")
        if owner == (org, user) and (tail.isdigit() and len(tail) < 14) == wedge:
            return tail
    return None


def print_file(lab, org: str, user: str, path: str, *, origin: str = "desk") -> dict:
    from lab.services import org_agents

    file = Path(path)
    if not file.is_file():
        raise LabError(f"no such file: {path}")
    if origin == "desk":
        job = org_agents.print_file(lab, org, user, file)
        return {"submitted": True, "from": f"lan-{org}", "job": job}
    return _print_from_cowork(lab, user, file)


def _print_from_cowork(lab, user: str, file: Path) -> dict:
    """Straight at the MFP from another tenant's laptop, claiming to be `user`, to every address the
    MFP may listen on. Submission may fail (the firewall drops it) or be accepted and then purged; it
    must never print."""
    st = firmware_status(lab)
    targets = [lab.topology.mfp_address]
    vip = st.get("tunnel", {}).get("virtual_ip")
    if vip:
        targets.append(vip)
    results = {}
    for addr in targets:
        # A dropped connection never answers: `timeout` bounds the attempt (exit 124).
        proc = lab.host("cowork").run(
            ["timeout", "-s", "KILL", "5", "ipptool", "-tv", "-T", "4", "-f", str(file), "-d", f"user={user}",
             f"ipp://{addr}:631/printers/tenantprint", "print-job.test"], check=False, timeout=15)
        results[addr] = {"exit": proc.returncode, "accepted": proc.returncode == 0,
                         "timed_out": proc.returncode == 124}
    return {"submitted": any(r["accepted"] for r in results.values()), "from": "cowork", "targets": results}


def fault(lab, kind: str, org: str) -> dict:
    if kind.startswith("gateway-"):
        svc = lab.service(f"gateway-{org}")
        if kind == "gateway-kill":
            return {"fault": kind, "org": org, "killed": svc.kill(lab)}
        svc.start(lab)
        return {"fault": kind, "org": org, "started": True}
    if kind.startswith("radius-"):
        svc = lab.service(f"radius-{org}")
        svc.stop(lab) if kind == "radius-stop" else svc.start(lab)
        return {"fault": kind, "org": org}
    if kind.startswith("cloud-"):
        svc = lab.service("cloud")
        svc.stop(lab) if kind == "cloud-stop" else svc.start(lab)
        return {"fault": kind}
    if kind in ("engine-stop", "engine-start"):  # the printer switched off (its jobs in flight lost) and on again
        svc = lab.service("engine")
        svc.switch_off(lab) if kind == "engine-stop" else svc.start(lab)
        return {"fault": kind}
    if kind in ("engine-media-empty", "engine-media-ok"):  # paper out (jobs wait at the engine), paper back
        from lab.services.engine import TRAY_SHEETS, set_media_level

        reasons = set_media_level(lab, 0 if kind == "engine-media-empty" else TRAY_SHEETS)
        return {"fault": kind, "reasons": reasons}
    if kind in ("mfp-power-cut", "firmware-hang"):
        if not _vm(lab):
            raise LabError(f"{kind}: needs the MFP as a guest (`lab up --mfp vm`)")
        fw = _firmware(lab)
        if kind == "mfp-power-cut":  # a hard reset: RAM gone, the disk as written; back once at rest
            return {"fault": kind, **fw.power_cut(lab)}
        return {"fault": kind, **fw.hang(lab)}  # SIGSTOP: the unit's watchdog must restart it
    if kind in ("ntp-block", "ntp-unblock"):  # the MFP up without network time; time arrives
        return {"fault": kind, **_firmware(lab).network_time(lab, kind == "ntp-unblock")}
    if kind in ("nfc-reader-unplug", "nfc-reader-plug"):  # the nfcpy reader's far end gone, back
        _needs_netns(lab, kind)
        svc = lab.service("nfc-sim")
        svc.unplug(lab) if kind == "nfc-reader-unplug" else svc.start(lab)
        return {"fault": kind}
    if kind == "engine-jam-next":  # the next job is aborted at the engine (a jam), not printed
        from lab.services.engine import jam_next

        jam_next(lab)
        return {"fault": kind}
    if kind == "firmware-kill":
        return {"fault": kind, "killed": _firmware(lab).kill(lab)}
    if kind == "firmware-start":
        fw = _firmware(lab)
        if not _vm(lab):  # the guest's is its unit's to restart
            lab.procs.stop(fw.name, timeout=1)  # only the dead record: the process is gone
        fw.start(lab)
        return {"fault": kind, "started": True}
    raise LabError(f"unknown fault {kind}")


def self_check(lab) -> dict:
    """{"exit", "report"}: the firmware's self-check where the MFP runs (office, or the guest)."""
    return _firmware(lab).self_check(lab)


def scan_secrets(lab) -> dict:
    from lab.scan import scan, scan_guest

    return scan_guest(lab) if _vm(lab) else scan(lab, "office")


def cloud_cli(lab, args: list[str]) -> dict:
    from lab.services.cloud import run_cli

    proc = run_cli(lab, args)
    return {"exit": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
