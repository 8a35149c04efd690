"""`python -m bench.cloud_lookup`: signed profile lookups per second and latency of the directory.

Seeds ORGS orgs (default 100,000; each with a sealed profile and a contract with the bench space),
then, for each backend (SQLite file with synchronous=FULL, the default; `sqlite-normal`; a private
PostgreSQL 15 with durable commits when available) and each worker count (default 1, 2, 4), runs
`tenantprint cloud serve` on loopback (plain HTTP: TLS cost is the transport's, not the directory's)
and drives it as DEVICES simulated devices, each enrolled with its own key and holding one keep-alive
connection with one request in flight (16 by default; `--devices 200` for the 200-device load),
dealt to CLIENTS processes that each run a single-threaded selector loop. Every request is signed
in advance with a fresh nonce by its device's key, so the timed
phase measures the directory, not the device's signing; the client's own CPU is measured and
reported beside the server's and the database's (the load generator shares the machine's cores).
Bounded by --requests and --seconds per configuration. Prints a table and writes
bench/results/cloud_lookup.json.

uvicorn's workers share one listening socket and the first to wake accepts a burst of new
connections, so with few long-lived connections the workers are loaded unevenly (e.g. 11/5 of 16):
raise --devices when comparing worker counts.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wire(org: str) -> dict:
    return {"org_id": org, "ttl_s": 300,
            "vpn": {"gateway": "10.78.0.11", "port": 500, "local_id": "mfp-1.space-1", "remote_id": f"gw.{org}",
                    "auth": "psk", "psk": f"bench-psk-{org}-{os.urandom(8).hex()}", "ca_cert_pem": None,
                    "ike_proposals": ["aes256gcm16-prfsha384-x25519"], "esp_proposals": ["aes256gcm16"],
                    "remote_ts": ["10.20.0.0/24"], "dpd_delay_s": 1},
            "auth": {"kind": "radius", "host": "10.20.0.50", "port": 1812, "secret": f"bench-radius-{org}",
                     "user_format": "{user}@{org}", "timeout_s": 3.0, "retries": 2},
            "policy": {"idle_timeout_s": 300, "max_hold_s": 3600, "combined_mode": False}}


def seed(url: str, kek: Path, n_orgs: int, devices: dict[str, bytes]) -> float:
    """Bulk-load the bench directory; returns seconds taken."""
    from sqlalchemy import insert

    from cloud import profiles
    from cloud.admin import T_ORG, T_SPACE
    from cloud.crypto import Keyring
    from cloud.lookup import T_CONTRACT, T_DEVICE, T_PROFILE
    from cloud.sealing import seal_profile
    from cloud.storage import migrate, open_engine, write_txn

    t0 = time.monotonic()
    engine = open_engine(url)
    migrate(engine)
    ring = Keyring(kek)
    now = time.time()
    with write_txn(engine) as c:
        c.execute(insert(T_SPACE).values(id="space-b", name="bench", created_at=now))
        c.execute(insert(T_DEVICE), [dict(id=d, space_id="space-b", public_key=pk, status="active", enrolled_at=now)
                                     for d, pk in devices.items()])
    batch = 5000
    for start in range(0, n_orgs, batch):
        orgs, profs, contracts = [], [], []
        for i in range(start, min(n_orgs, start + batch)):
            org = f"org{i:06d}"
            public, secret = profiles.split(profiles.normalize(_wire(org)))
            sealed = seal_profile(ring, org, public, secret)  # the public part bound into the AEAD
            orgs.append(dict(id=org, name=org, created_at=now))
            profs.append(dict(org_id=org, **sealed.columns(), version=1, updated_at=now))
            contracts.append(dict(org_id=org, space_id="space-b", status="active", started_at=now))
        with write_txn(engine) as c:
            c.execute(insert(T_ORG), orgs)
            c.execute(insert(T_PROFILE), profs)
            c.execute(insert(T_CONTRACT), contracts)
    engine.dispose()
    return time.monotonic() - t0


def _presign(device_id: str, key_pem: bytes, n_orgs: int, count: int, host: str) -> list[bytes]:
    """`count` complete HTTP/1.1 requests for random orgs, each signed with a fresh nonce (signed
    before the timed phase: the client's signing is the device's cost, not the directory's)."""
    from cryptography.hazmat.primitives import serialization

    from hal.directory.signing import sign_headers

    key = serialization.load_pem_private_key(key_pem, None)
    rnd = random.Random()
    out = []
    for _ in range(count):
        path = f"/v1/orgs/org{rnd.randrange(n_orgs):06d}/profile"
        head = "".join(f"{k}: {v}\r\n" for k, v in sign_headers(key, device_id, "GET", path, b"").items())
        out.append(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode())
    return out


class _Conn:
    """One keep-alive connection of one simulated device, with one request in flight."""
    __slots__ = ("sock", "buf", "t0", "need", "reqs", "next")

    def __init__(self, sock, reqs: list[bytes]):
        self.sock, self.buf, self.t0, self.need, self.reqs, self.next = sock, b"", 0.0, -1, reqs, 0


def _client_proc(port: int, devices: list[tuple[str, bytes]], n_orgs: int, requests: int,
                 seconds: float, ready: mp.Queue, start: mp.Event, out: mp.Queue) -> None:
    """A single-threaded load generator: one keep-alive socket per simulated device, all driven by
    one selector, each sending requests pre-signed by its own device key; reports latencies,
    non-200 answers and its own CPU seconds."""
    import selectors

    per_device = max(1, requests // len(devices))
    sel = selectors.DefaultSelector()
    conns_ = []
    for device_id, key_pem in devices:
        reqs = _presign(device_id, key_pem, n_orgs, per_device, f"127.0.0.1:{port}")
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        conns_.append(_Conn(s, reqs))
    ready.put(True)
    start.wait()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    lat: list[float] = []
    bad, first_body = 0, None
    stop_at = time.monotonic() + seconds

    def send(c: _Conn) -> bool:
        if c.next >= len(c.reqs) or time.monotonic() > stop_at:
            return False
        data, c.next = c.reqs[c.next], c.next + 1
        c.t0, c.buf, c.need = time.perf_counter(), b"", -1
        c.sock.sendall(data)  # a few hundred bytes: fits the socket buffer
        return True

    for c in conns_:
        if send(c):
            sel.register(c.sock, selectors.EVENT_READ, c)
    while sel.get_map():
        for k, _ in sel.select(timeout=10):
            c = k.data
            chunk = c.sock.recv(65536)
            if not chunk:
                raise RuntimeError("server closed a keep-alive connection")
            c.buf += chunk
            if c.need < 0:
                end = c.buf.find(b"\r\n\r\n")
                if end < 0:
                    continue
                head = c.buf[:end].lower()
                i = head.find(b"content-length:")
                c.need = end + 4 + int(head[i + 15:head.index(b"\r\n", i) if b"\r\n" in head[i:] else None])
            if len(c.buf) < c.need:
                continue
            lat.append(time.perf_counter() - c.t0)
            if c.buf[9:12] != b"200":
                bad += 1
            elif first_body is None:
                first_body = c.buf[c.buf.find(b"\r\n\r\n") + 4:c.need]
            if not send(c):
                sel.unregister(c.sock)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for c in conns_:
        c.sock.close()
    out.put((lat, bad, (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime), first_body))


def _tree_cpu(root: int) -> float:
    """CPU seconds (user + system) used so far by process `root` and its live descendants (by
    parent pid: PostgreSQL backends leave the postmaster's process group)."""
    tick, stats = os.sysconf("SC_CLK_TCK"), {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(d)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, (ppid, _) in stats.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sum(stats[p][1] for p in tree if p in stats) / tick


def measure(url: str, kek: Path, workers: int, keys: dict[str, bytes], n_orgs: int, clients: int,
            requests: int, seconds: float, log: Path, db_pid: int | None = None, sqlite_sync: str = "full") -> dict:
    import httpx

    from hal.directory.profile import SessionProfile

    port = _free_port()
    # the rate limiter stays in place (its cost is measured), with limits a few devices at full
    # speed never reach
    config = log.parent / "cloud-bench.toml"
    config.write_text("[limits]\ndevice_per_min = 1000000\ndevice_burst = 1000000\n"
                      "source_per_min = 1000000\nsource_burst = 1000000\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TP_CLOUD_DB": url, "TP_CLOUD_KEK_FILE": str(kek),
           "TP_CLOUD_LOG": "WARNING", "TP_CLOUD_SQLITE_SYNC": sqlite_sync, "TP_CLOUD_CONFIG": str(config)}
    with open(log, "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "tenantprint", "cloud", "serve", "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", str(workers)],
                                env=env, cwd=REPO, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start (see {log})")
            time.sleep(0.1)
        q: mp.Queue = mp.Queue()
        ready: mp.Queue = mp.Queue()
        go = mp.Event()
        devs = list(keys.items())  # one connection per simulated device, dealt to the processes
        ps = [mp.Process(target=_client_proc, args=(port, devs[i::clients], n_orgs, requests // clients, seconds,
                                                    ready, go, q))
              for i in range(clients)]
        for p in ps:
            p.start()
        for _ in ps:
            ready.get(timeout=120)  # pre-signed and connected
        server_cpu0 = _tree_cpu(proc.pid)
        db_cpu0 = _tree_cpu(db_pid) if db_pid else 0.0
        t0 = time.perf_counter()
        go.set()
        results = [q.get(timeout=seconds + 60) for _ in ps]
        elapsed = time.perf_counter() - t0
        server_cpu = _tree_cpu(proc.pid) - server_cpu0
        db_cpu = (_tree_cpu(db_pid) - db_cpu0) if db_pid else 0.0
        for p in ps:
            p.join()
    finally:
        os.killpg(proc.pid, 15)  # the server we started, by its pid/session
        proc.wait(15)
    lat = sorted(x for r in results for x in r[0])
    errors = sum(r[1] for r in results)
    client_cpu = sum(r[2] for r in results)
    for r in results:  # the answers are real profiles, not just 200s
        if r[3] is not None:
            SessionProfile.from_wire(json.loads(r[3])).wipe()
    pct = lambda q: round(lat[min(len(lat) - 1, int(q * (len(lat) - 1)))] * 1000, 2)
    cpu = lambda s: round(100 * s / elapsed, 0)
    return {"workers": workers, "requests": len(lat), "errors": errors, "seconds": round(elapsed, 2),
            "lookups_per_s": round(len(lat) / elapsed, 1), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "mean_ms": round(statistics.mean(lat) * 1000, 2),
            "cpu_pct": {"server": cpu(server_cpu), "database": cpu(db_cpu), "client": cpu(client_cpu)},
            "server_cpu_ms_per_lookup": round(1000 * server_cpu / max(1, len(lat)), 3)}


class PrivatePostgres:
    """PostgreSQL 15 as user postgres on a temp dir and a free loopback port; stopped by PID."""

    def __init__(self):
        self.base = Path(tempfile.mkdtemp(prefix="tpc-bench-pg-"))
        shutil.chown(self.base, "postgres", "postgres")
        data = self.base / "data"
        subprocess.run([PG_BIN / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
                       user="postgres", check=True, capture_output=True, cwd=self.base)
        self.port = _free_port()
        self.log = open(self.base / "pg.log", "wb")
        self.proc = subprocess.Popen(
            [PG_BIN / "postgres", "-D", data, "-k", self.base, "-h", "127.0.0.1", "-p", str(self.port),
             "-c", "max_connections=200"],  # durable defaults: fsync, synchronous_commit=on
            user="postgres", stdout=self.log, stderr=subprocess.STDOUT, cwd=self.base, start_new_session=True)
        import psycopg
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres").close()
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("private PostgreSQL did not start")
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cloud_lookup")
    ap.add_argument("--orgs", type=int, default=100_000)
    ap.add_argument("--workers", default="1,2,4", help="uvicorn worker counts to measure")
    ap.add_argument("--backends", default="sqlite,postgresql", help="of sqlite, sqlite-normal, postgresql")
    ap.add_argument("--requests", type=int, default=12000, help="lookups per configuration (upper bound)")
    ap.add_argument("--seconds", type=float, default=15, help="time per configuration (upper bound)")
    ap.add_argument("--clients", type=int, default=2, help="client processes")
    ap.add_argument("--devices", type=int, default=16,
                    help="simulated devices: each enrolled with its own key, on its own keep-alive connection "
                         "with one lookup in flight (dealt to the client processes)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "cloud_lookup.json"))
    args = ap.parse_args(argv)

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cloud.crypto import new_kek, write_kek_file

    work = Path(tempfile.mkdtemp(prefix="tpc-bench-"))
    os.chmod(work, 0o700)
    kek = work / "kek"
    write_kek_file(kek, [new_kek()])
    if args.devices < args.clients:
        raise SystemExit("--devices must be at least --clients")
    privs = {f"bench-dev-{i}": Ed25519PrivateKey.generate() for i in range(args.devices)}
    pems = {d: k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()) for d, k in privs.items()}
    pubs = {d: k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            for d, k in privs.items()}
    rows, seeds, pg = [], {}, None
    try:
        for backend in args.backends.split(","):
            if backend in ("sqlite", "sqlite-normal"):  # synchronous=FULL (the default) or NORMAL
                url = f"sqlite:///{work / (backend + '.db')}"
            elif backend == "postgresql":
                if os.geteuid() != 0 or not (PG_BIN / "postgres").exists():
                    print("postgresql: skipped (needs root and PostgreSQL 15)", file=sys.stderr)
                    continue
                pg = PrivatePostgres()
                url = pg.url
            else:
                raise SystemExit(f"unknown backend {backend}")
            seeds[backend] = round(seed(url, kek, args.orgs, pubs), 1)
            print(f"{backend}: seeded {args.orgs} orgs in {seeds[backend]} s", flush=True)
            for w in (int(x) for x in args.workers.split(",")):
                r = measure(url, kek, w, pems, args.orgs, args.clients, args.requests, args.seconds,
                            work / "serve.log", pg.proc.pid if pg else None,
                            "normal" if backend == "sqlite-normal" else "full")
                r["backend"] = backend
                rows.append(r)
                c = r["cpu_pct"]
                print(f"  {backend:10} workers={w}  {r['lookups_per_s']:8.1f}/s  p50 {r['p50_ms']:6.2f} ms  "
                      f"p99 {r['p99_ms']:6.2f} ms  n={r['requests']} errors={r['errors']}  cpu% server {c['server']:.0f}"
                      f" db {c['database']:.0f} client {c['client']:.0f}", flush=True)
            if pg is not None:
                pg.stop()
                pg = None
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)

    print("\nbackend     workers  lookups/s   p50 ms   p99 ms  requests  errors   cpu% server/db/client"
          "  server ms/lookup")
    for r in rows:
        c = r["cpu_pct"]
        print(f"{r['backend']:10}  {r['workers']:7}  {r['lookups_per_s']:9.1f}  {r['p50_ms']:7.2f}  {r['p99_ms']:7.2f}"
              f"  {r['requests']:8}  {r['errors']:6}   {c['server']:4.0f} /{c['database']:4.0f} /{c['client']:4.0f}"
              f"       {r['server_cpu_ms_per_lookup']:.3f}")
    out = {"bench": "cloud_lookup", "orgs": args.orgs, "clients": args.clients, "devices": args.devices,
           "transport": "http on loopback (no TLS)", "seed_seconds": seeds, "results": rows,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "at": time.time()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
