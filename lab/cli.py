"""`tenantprint lab ...`: the lab's command line. JSON on stdout; exit 0 on success, non-zero
with a JSON `error` otherwise. Acceptance tests use it as a contract."""

from __future__ import annotations

import argparse
import json
import sys

from lab.host import LabError
from lab.lab import Lab
from lab.options import BACKENDS, ENGINES, MFP_KINDS, PANEL_ACTIONS, TRUSTS, LabOptions

FAULTS = ("gateway-kill", "gateway-start", "cloud-stop", "cloud-start", "radius-stop", "radius-start",
          "firmware-kill", "firmware-start", "engine-stop", "engine-start",
          "engine-media-empty", "engine-media-ok", "engine-jam-next", "nfc-reader-unplug", "nfc-reader-plug",
          "mfp-power-cut", "firmware-hang", "ntp-block", "ntp-unblock")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tenantprint lab", description="the whole system on one machine")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build the lab and start its daemons (idempotent)")
    up.add_argument("--wan-rtt-ms", type=float, default=0.0, help="round trip added between office and WAN")
    up.add_argument("--tunnel-backend", choices=BACKENDS, default="auto")
    up.add_argument("--combined", action="store_true", help="acme's profile uses combined mode")
    up.add_argument("--trust", choices=TRUSTS, default="cert",
                    help="cert (default): the MFP shows its own certificate from the space's CA (IKE, RadSec); "
                         "no org secret in any profile; psk: the weaker mode, the org's PSK and RADIUS secret in the profile")
    up.add_argument("--tpm", action="store_true",
                    help="the MFP's IKE/TLS key is made inside a TPM 2.0 (swtpm behind tpm2-abrmd on office) "
                         "and never leaves it; its state dir holds only a reference useless without that TPM")
    up.add_argument("--ldap", action="append", default=[], metavar="ORG",
                    help="ORG's users are checked by its LDAP server (slapd) instead of FreeRADIUS (repeatable)")
    up.add_argument("--engine", choices=ENGINES, default="pdf",
                    help="the print engine's formats: pdf (PDF, PWG raster, JPEG, text), pwg-only, urf-only")
    up.add_argument("--extra-orgs", type=int, default=0, metavar="N",
                    help="N more contracted orgs (umbrella), each with its gateway, RADIUS, gateway agent and desk")
    up.add_argument("--mfp", choices=MFP_KINDS, default="netns",
                    help="netns (default): the firmware on the office host; vm: the MFP is a QEMU guest "
                         "booted from the amd64 twin image, the firmware its systemd service (kernel XFRM)")
    sub.add_parser("down", help="stop everything and remove every trace of the lab")
    sub.add_parser("status", help="hosts, services, firmware, desks, printed documents, as JSON")
    tap = sub.add_parser("tap", help="present the virtual card, remove it, wait until the MFP settles")
    tap.add_argument("--org", required=True)
    tap.add_argument("--user", required=True)
    tap.add_argument("--uid", help="card UID in hex (default: derived from the user)")
    tap.add_argument("--pin", help="PIN to type on the panel if the org's server asks for one")
    tap.add_argument("--ndef-hex", help="raw NDEF message instead of a badge (bad-input tests)")
    tap.add_argument("--card", choices=("type4", "type2", "uid-only", "type3", "wedge"), default="type4",
                     help="the card: a Type 4 or Type 2 (NTAG) badge, or the user's registered UID-only "
                          "staff card (always asks for the PIN), on the PC/SC reader; a Type 3 (FeliCa "
                          "Lite-S) badge on the nfcpy reader; the user's proximity badge on the wedge reader")
    tap.add_argument("--keypad", action="store_true", help="type the PIN on the MFP's USB keypad, not its screen")
    tap.add_argument("--choose", action="store_true",
                     help='touch "Choose my jobs" first: the tap lists the jobs on the panel, prints none')
    pan = sub.add_parser("panel", help="what the MFP's panel shows, or touch it as the person in front of it")
    pan.add_argument("action", choices=PANEL_ACTIONS)
    pan.add_argument("--jobs", type=int, nargs="+", help="job ids (print: the chosen ones, else all; delete)")
    pr = sub.add_parser("print", help="print a file as a user of an org")
    pr.add_argument("--org", required=True)
    pr.add_argument("--user", required=True)
    pr.add_argument("--from", dest="origin", choices=("desk", "cowork"), default="desk")
    pr.add_argument("file")
    fault = sub.add_parser("fault", help="inject a fault")
    fault.add_argument("kind", choices=FAULTS)
    fault.add_argument("--org", default="acme")
    card = sub.add_parser("card", help="the virtual card: `last`, the NDEF message (hex) it gave at its "
                                       "last read, as a skimmer would keep it (replay with tap --ndef-hex)")
    card.add_argument("action", choices=("last",))
    sub.add_parser("scan-secrets", help="look for every org's canary secrets on the MFP host")
    sub.add_parser("self-check", help="the MFP's own self-check (`tenantprint firmware check`) where it runs")

    cl = sub.add_parser("cloud", help="run the cloud admin CLI against the lab's directory (after --)")
    cl.add_argument("args", nargs=argparse.REMAINDER)
    sub.add_parser("demo", help="the whole story, narrated")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        out = _run(args)
    except (LabError, OSError, RuntimeError, ValueError, KeyError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}" if not isinstance(exc, LabError) else str(exc)}))
        return 1
    print(json.dumps(out, indent=2, default=str))
    return 0 if not (isinstance(out, dict) and "error" in out) else 1


def _run(args) -> dict:
    from lab import actions

    if args.cmd == "up":
        opts = LabOptions(args.wan_rtt_ms, args.tunnel_backend, args.combined, tuple(args.ldap), args.engine,
                          args.extra_orgs, args.trust, args.tpm, args.mfp)
        lab = Lab(options=opts)
        if lab.layout.root.exists() and LabOptions.load(lab.layout.root) != opts:
            raise LabError("the lab is up with other options: `tenantprint lab down` first")
        return lab.up()
    lab = Lab()
    if args.cmd == "down":
        return lab.down()
    if args.cmd == "status":
        return actions.status(lab)
    if args.cmd == "tap":
        return actions.tap(lab, args.org, args.user, uid=args.uid, pin=args.pin, ndef_hex=args.ndef_hex,
                           card_kind=args.card, choose=args.choose, keypad=args.keypad)
    if args.cmd == "panel":
        return actions.panel(lab, args.action, args.jobs)
    if args.cmd == "print":
        return actions.print_file(lab, args.org, args.user, args.file, origin=args.origin)
    if args.cmd == "fault":
        return actions.fault(lab, args.kind, args.org)
    if args.cmd == "card":
        from lab.vcard import VirtualCard

        reply = VirtualCard(lab).last_read()
        return {"uid_hex": reply.get("uid_hex"), "ndef_hex": reply.get("ndef_hex")}
    if args.cmd == "scan-secrets":
        return actions.scan_secrets(lab)
    if args.cmd == "self-check":
        return actions.self_check(lab)
    if args.cmd == "cloud":
        extra = args.args[1:] if args.args[:1] == ["--"] else args.args
        return actions.cloud_cli(lab, extra)
    if args.cmd == "demo":
        from lab import demo

        return demo.run(lab, out=sys.stderr)
    raise LabError(f"unknown command {args.cmd}")
