"""`tenantprint cloud ...`: run and administer the org directory.

Human output by default, `--json` for scripts. The database comes from `--db` or `TP_CLOUD_DB`
(a PostgreSQL password belongs in the environment, not on a command line that `ps` shows), the
KEK file from `--kek-file` or `TP_CLOUD_KEK_FILE`, the server's settings (API docs, rate limits,
trusted proxies) from `serve --config` or `TP_CLOUD_CONFIG` (cloud/config.py). No command ever
prints a secret.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from cloud import config as cloud_config
from cloud.admin import Admin, AdminError
from cloud.crypto import CryptoError, Keyring, new_kek, write_kek_file
from cloud.storage import StorageError, db_url, migrate, open_engine


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    S = argparse.SUPPRESS
    p.add_argument("--db", default=S, help="database URL (default: $TP_CLOUD_DB or sqlite file)")
    p.add_argument("--kek-file", default=S, help="key-encryption key file (default: $TP_CLOUD_KEK_FILE)")
    p.add_argument("--json", action="store_true", default=S, help="machine-readable output")
    return p


def _parser() -> argparse.ArgumentParser:
    c = _common()
    p = argparse.ArgumentParser(prog="tenantprint cloud", parents=[c], description="the org directory")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", parents=[c], help="run the HTTP API")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8443)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--tls-cert")
    s.add_argument("--tls-key")
    s.add_argument("--window-s", type=int, default=60, help="accepted clock difference of signed requests")
    s.add_argument("--config", help=f"settings file (TOML; default: ${cloud_config.ENV_PATH}, else "
                                    f"{cloud_config.DEFAULT_PATH} if it exists)")
    s.add_argument("--dump-config", action="store_true", help="print the merged settings and exit")

    k = sub.add_parser("init-kek", parents=[c], help="create a new KEK file (mode 0600)")
    k.add_argument("path", nargs="?")

    sp = sub.add_parser("space", parents=[c]).add_subparsers(dest="action", required=True)
    a = sp.add_parser("add", parents=[c]); a.add_argument("space_id"); a.add_argument("--name")
    sp.add_parser("list", parents=[c])
    a = sp.add_parser("ca", parents=[c], help="the space's device CA certificate (PEM): what orgs' gateways and "
                                              "RADIUS servers trust for its devices (made on first use)")
    a.add_argument("space_id")

    dv = sub.add_parser("device", parents=[c]).add_subparsers(dest="action", required=True)
    a = dv.add_parser("enrol-token", parents=[c], help="issue a one-time enrolment token")
    a.add_argument("--space", required=True); a.add_argument("--device", required=True)
    a.add_argument("--ttl-s", type=int, default=3600)
    a = dv.add_parser("list", parents=[c]); a.add_argument("--space")
    a = dv.add_parser("revoke", parents=[c], help="revoke a device: no lookups, no certificates, its unexpired "
                                                   "certificates on its space's CRL (re-enrol it under a new id)")
    a.add_argument("device_id", nargs="?"); a.add_argument("--device", dest="device_opt", metavar="ID")

    og = sub.add_parser("org", parents=[c]).add_subparsers(dest="action", required=True)
    a = og.add_parser("add", parents=[c]); a.add_argument("org_id"); a.add_argument("--name")
    og.add_parser("list", parents=[c])
    a = og.add_parser("show", parents=[c]); a.add_argument("org_id")
    a = og.add_parser("set-profile", parents=[c], help="profile from a JSON file in the wire format ('-': stdin)")
    a.add_argument("org_id"); a.add_argument("file")

    ct = sub.add_parser("contract", parents=[c]).add_subparsers(dest="action", required=True)
    for name in ("add", "end"):
        a = ct.add_parser(name, parents=[c]); a.add_argument("--org", required=True); a.add_argument("--space", required=True)
    a = ct.add_parser("list", parents=[c]); a.add_argument("--org"); a.add_argument("--space")

    cd = sub.add_parser("card", parents=[c], help="cards known by their UID only (the space's card directory)"
                        ).add_subparsers(dest="action", required=True)
    a = cd.add_parser("add", parents=[c], help="register a card to an org (needs the org's contract with the space)")
    a.add_argument("--space", required=True); a.add_argument("--org", required=True)
    a.add_argument("--card", required=True, help="card-<uid hex or wedge digits>, as the firmware names it")
    a = cd.add_parser("remove", parents=[c]); a.add_argument("--space", required=True); a.add_argument("--card", required=True)
    a = cd.add_parser("list", parents=[c], help="registered cards (by hash prefix; card ids are never stored)")
    a.add_argument("--space"); a.add_argument("--org")

    a = sub.add_parser("audit", parents=[c], help="audit events, oldest first; then the counted refusals "
                                                  "(one line per minute; without --org/--device)")
    a.add_argument("--org"); a.add_argument("--device")
    a.add_argument("--since", help="ISO 8601 time or unix seconds"); a.add_argument("--until")
    a.add_argument("--limit", type=int, default=100)

    a.add_argument("--refusals", action="store_true", help="only the counted refusals (with --json: their summaries)")

    sub.add_parser("rotate-key", parents=[c], help="re-wrap every record under a new KEK (in place)")
    sub.add_parser("reseal-profiles", parents=[c],
                   help="bind the public part of profiles sealed before 0003 into their sealed part")
    return p


def _when(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise AdminError(f"not a time: {value!r} (ISO 8601 or unix seconds)") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def _iso(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _kek_path(args) -> Path | None:
    value = getattr(args, "kek_file", None) or os.environ.get("TP_CLOUD_KEK_FILE")
    return Path(value) if value else None


def _print(args, data, human) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        human(data)


def _table(rows: list[dict], cols: list[str]) -> None:
    def cell(r, c):
        v = r.get(c)
        return _iso(v) if c.endswith("_at") or c == "at" else ("-" if v is None else str(v))
    widths = [max([len(c)] + [len(cell(r, c)) for r in rows]) for c in cols]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(cell(r, c).ljust(w) for c, w in zip(cols, widths)))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.cmd == "init-kek":
            return _init_kek(args)
        if args.cmd == "serve":
            return _serve(args)
        engine = open_engine(getattr(args, "db", None))
        migrate(engine)
        kek = _kek_path(args)
        admin = Admin(engine, Keyring(kek) if kek else None)
        return _run(args, admin)
    except (AdminError, StorageError, CryptoError, cloud_config.ConfigError) as exc:
        print(f"tenantprint cloud: {exc}", file=sys.stderr)
        return 1


def _init_kek(args) -> int:
    path = Path(args.path) if args.path else _kek_path(args)
    if path is None:
        raise AdminError("init-kek: give a path or --kek-file")
    if path.exists():
        raise AdminError(f"{path} exists; use rotate-key to change keys")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_kek_file(path, [new_kek()])
    _print(args, {"kek_file": str(path)}, lambda d: print(f"KEK written to {d['kek_file']} (mode 0600)"))
    return 0


def _serve(args) -> int:
    import uvicorn

    path = cloud_config.config_path(args.config)
    config = cloud_config.load(path)  # fail now, not in a worker
    if args.dump_config:
        print(json.dumps(config.as_dict(), indent=2))
        return 0
    url = db_url(getattr(args, "db", None))
    kek = _kek_path(args)
    if kek is None:
        raise AdminError("serve needs --kek-file or TP_CLOUD_KEK_FILE")
    Keyring(kek)  # fail now, not in a worker, if the file is missing or too open
    engine = open_engine(url)
    migrate(engine)
    legacy = Admin(engine).legacy_profiles()
    engine.dispose()
    if legacy:
        print(f"tenantprint cloud: {legacy} profiles are sealed without their public part and are refused "
              "until `tenantprint cloud reseal-profiles`", file=sys.stderr)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise AdminError("--tls-cert and --tls-key go together")
    os.environ.update(TP_CLOUD_DB=url, TP_CLOUD_KEK_FILE=str(kek), TP_CLOUD_WINDOW_S=str(args.window_s))
    if path is not None:
        os.environ[cloud_config.ENV_PATH] = str(path.resolve())
    proxies = config.server.trusted_proxies
    # The client's address (rate limits, refusal counts, anomalies) is the TCP peer's, or what a
    # trusted load balancer says in X-Forwarded-For; nobody else's X-Forwarded-For is read.
    uvicorn.run("cloud.api:app_from_env", factory=True, host=args.host, port=args.port, workers=args.workers,
                ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key, access_log=False, log_level="warning",
                h11_max_incomplete_event_size=16 * 1024, timeout_keep_alive=30, server_header=False,
                proxy_headers=bool(proxies), forwarded_allow_ips=",".join(proxies) or None)
    return 0


def _run(args, admin: Admin) -> int:
    cmd, action = args.cmd, getattr(args, "action", None)
    if cmd == "space" and action == "add":
        _print(args, admin.add_space(args.space_id, args.name), lambda d: print(f"space {d['id']} added"))
    elif cmd == "space" and action == "ca":
        from cloud.device_ca import DeviceCA

        print(DeviceCA(admin.engine, admin.keyring).ca_pem(args.space_id), end="")
    elif cmd == "space":
        _print(args, admin.list_spaces(), lambda rows: _table(rows, ["id", "name", "created_at"]))
    elif cmd == "device" and action == "enrol-token":
        _print(args, admin.enrol_token(args.space, args.device, args.ttl_s),
               lambda d: print(f"{d['token']}\n(one-time token for device {d['device_id']} in space "
                               f"{d['space_id']}, expires {_iso(d['expires_at'])})"))
    elif cmd == "device" and action == "list":
        _print(args, admin.list_devices(args.space),
               lambda rows: _table(rows, ["id", "space_id", "status", "enrolled_at", "revoked_at"]))
    elif cmd == "device":
        if bool(args.device_id) == bool(args.device_opt):
            raise AdminError("device revoke: name the device once (--device ID)")
        device_id = args.device_id or args.device_opt
        n = admin.revoke_device(device_id)
        _print(args, {"revoked": device_id, "certificates_revoked": n},
               lambda d: print(f"device {d['revoked']} revoked ({d['certificates_revoked']} certificates on its "
                               "space's CRL)"))
    elif cmd == "org" and action == "add":
        _print(args, admin.add_org(args.org_id, args.name), lambda d: print(f"org {d['id']} added"))
    elif cmd == "org" and action == "list":
        _print(args, admin.list_orgs(), lambda rows: _table(rows, ["id", "name", "profile_version"]))
    elif cmd == "org" and action == "show":
        _print(args, admin.show_org(args.org_id), _show_org)
    elif cmd == "org":
        raw = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        try:
            wire = json.loads(raw)
        except ValueError:
            raise AdminError("profile file is not JSON") from None
        _print(args, admin.set_profile(args.org_id, wire),
               lambda d: print(f"profile of org {d['org_id']} stored (version {d['version']})"))
    elif cmd == "contract" and action == "add":
        _print(args, admin.add_contract(args.org, args.space),
               lambda d: print(f"contract {d['id']}: org {d['org_id']} <-> space {d['space_id']} active"))
    elif cmd == "contract" and action == "end":
        admin.end_contract(args.org, args.space)
        _print(args, {"ended": True}, lambda d: print(f"contract org {args.org} <-> space {args.space} ended"))
    elif cmd == "contract":
        _print(args, admin.list_contracts(args.org, args.space),
               lambda rows: _table(rows, ["id", "org_id", "space_id", "status", "started_at", "ended_at"]))
    elif cmd == "card" and action == "add":
        _print(args, admin.add_card(args.space, args.org, args.card),
               lambda d: print(f"card {d['card_ref']} {'registered' if d['added'] else 'was already registered'} "
                               f"to org {d['org_id']} in space {d['space_id']}"))
    elif cmd == "card" and action == "remove":
        _print(args, admin.remove_card(args.space, args.card),
               lambda d: print(f"card {d['card_ref']} of org {d['org_id']} removed from space {d['space_id']}"))
    elif cmd == "card":
        _print(args, admin.list_cards(args.space, args.org),
               lambda rows: _table(rows, ["space_id", "org_id", "card_ref", "added_at"]))
    elif cmd == "audit":
        since, until = _when(args.since), _when(args.until)
        counted = [] if args.org or args.device else admin.refusal_counts(since, until)
        if args.refusals:
            _print(args, counted, _refusal_lines)
            return 0
        rows = admin.audit(args.org, args.device, since, until, args.limit)

        def human(events: list[dict]) -> None:
            _table(events, ["at", "device_id", "org_id", "action", "outcome", "card_ref", "source"])
            _refusal_lines(counted)
        # --json keeps its shape (a list of events): the counters are `audit --refusals --json`
        _print(args, rows, human)
    elif cmd == "rotate-key":
        kek = _kek_path(args)
        if kek is None:
            raise AdminError("rotate-key needs --kek-file or TP_CLOUD_KEK_FILE")
        _print(args, admin.rotate_key(kek),
               lambda d: print(f"{d['rewrapped']} profiles, {d['card_keys_rewrapped']} card keys and "
                               f"{d['ca_keys_rewrapped']} device CA keys re-wrapped under KEK {d['kek_id']}"))
    elif cmd == "reseal-profiles":
        _print(args, admin.reseal_profiles(),
               lambda d: print(f"{d['resealed']} profiles re-sealed with their public part bound"))
    return 0


def _refusal_lines(summaries: list[dict]) -> None:
    """One line per minute of counted refusals: requests that proved no device (never attributed)."""
    if not summaries:
        return
    print("\nrefused without a verified device (counted per minute, source /24 or /48):")
    for s in summaries:
        reasons = ", ".join(f"{k} {n}" for k, n in sorted(s["reasons"].items(), key=lambda kv: -kv[1]))
        top = sorted(s["sources"].items(), key=lambda kv: -kv[1])
        sources = ", ".join(f"{k} {n}" for k, n in top[:3]) + (f", +{len(top) - 3} more" if len(top) > 3 else "")
        print(f"{_iso(s['bucket'])}  {s['total']:>7}  {reasons}  from {sources}")


def _show_org(d: dict) -> None:
    print(f"org {d['id']} ({d['name']})")
    for c in d["contracts"]:
        print(f"  contract {c['id']} with space {c['space_id']}: {c['status']}")
    p = d["profile"]
    if p is None:
        print("  no profile")
        return
    print(f"  profile version {p['version']}, updated {_iso(p['updated_at'])}, KEK {p['kek_id']}, "
          f"sealing {p['sealing']}" + (" (refused until reseal-profiles)" if p["sealing"] == "legacy" else ""))
    print(f"  secrets set: {', '.join(p['secrets_set'])} (never shown)")
    print("  " + json.dumps(p["public"], indent=2).replace("\n", "\n  "))
