"""The org directory of the lab: `tenantprint cloud serve` on host `cloud` (10.78.0.2:8443, TLS).

Everything it keeps is in `lab.layout.data_dir("cloud")` (mode 0700): the lab CA (`ca.pem`, what
clients trust; `ca.key`), the server's certificate and key, the KEK file and the SQLite database.
`seed(...)` fills the directory for a scenario; `run_cli(lab, args)` runs the admin CLI against
the lab's database (`tenantprint lab cloud -- ...`).
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lab.host import LabError

HOST, PORT = "cloud", 8443
REPO = Path(__file__).resolve().parents[2]


def make_tls(dir_: Path, ips: list[str], names: list[str] = ("cloud",)) -> dict[str, Path]:
    """A CA and a server certificate for `ips`/`names` in `dir_` (keys mode 0600). Idempotent."""
    dir_ = Path(dir_)
    paths = {k: dir_ / f"{k}.pem" for k in ("ca", "ca-key", "server", "server-key")}
    if all(p.exists() for p in paths.values()):
        return paths
    dir_.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tenantprint lab CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - _dt.timedelta(minutes=5))
          .not_valid_after(now + _dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.IPAddress(ipaddress.ip_address(i)) for i in ips] + [x509.DNSName(n) for n in names]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5)).not_valid_after(now + _dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))

    def write(path: Path, data: bytes, mode: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    pem = serialization.Encoding.PEM
    pkcs8, none = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    write(paths["ca-key"], ca_key.private_bytes(pem, pkcs8, none), 0o600)
    write(paths["server-key"], key.private_bytes(pem, pkcs8, none), 0o600)
    write(paths["server"], cert.public_bytes(pem), 0o644)
    write(paths["ca"], ca.public_bytes(pem), 0o644)
    return paths


def data_dir(lab) -> Path:
    d = lab.layout.data_dir("cloud")
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    return d


def cloud_env(lab) -> dict[str, str]:
    d = data_dir(lab)
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TP_CLOUD_DB": f"sqlite:///{d / 'cloud.db'}",
            "TP_CLOUD_KEK_FILE": str(d / "kek")}


def url(lab) -> str:
    return f"https://{lab.address(HOST)}:{PORT}"


def ca_file(lab) -> Path:
    return data_dir(lab) / "ca.pem"


def _prepare(lab) -> dict[str, Path]:
    from cloud.crypto import new_kek, write_kek_file
    from cloud.storage import migrate, open_engine

    d = data_dir(lab)
    tls = make_tls(d, [lab.address(HOST), "127.0.0.1"])
    env = cloud_env(lab)
    if not Path(env["TP_CLOUD_KEK_FILE"]).exists():
        write_kek_file(Path(env["TP_CLOUD_KEK_FILE"]), [new_kek()])
    engine = open_engine(env["TP_CLOUD_DB"])
    try:
        migrate(engine)
    finally:
        engine.dispose()
    return tls


class CloudService:
    """The directory API on `cloud`; started via `lab.spawn`, stopped by PID."""

    name = "cloud"

    def __init__(self, workers: int = 1):
        self.workers = workers

    def running(self, lab) -> bool:
        rec = lab.procs.get(self.name)
        return bool(rec and rec.alive())

    def _answers(self, lab) -> bool:
        probe = ["curl", "-sf", "--max-time", "1", "--cacert", str(ca_file(lab)), url(lab) + "/v1/health"]
        return lab.host(HOST).run(probe, check=False).returncode == 0

    def start(self, lab) -> None:
        if self.running(lab):
            return
        tls = _prepare(lab)
        cmd = [sys.executable, "-m", "tenantprint", "cloud", "serve", "--host", lab.address(HOST),
               "--port", str(PORT), "--workers", str(self.workers),
               "--tls-cert", str(tls["server"]), "--tls-key", str(tls["server-key"])]
        lab.spawn(self.name, HOST, cmd, env=cloud_env(lab), cwd=REPO)
        deadline = time.monotonic() + 20
        while not self._answers(lab):
            if not self.running(lab):
                raise LabError(f"cloud: serve exited at start (log: {lab.layout.logs_dir / 'cloud.log'})")
            if time.monotonic() > deadline:
                lab.procs.stop(self.name)
                raise LabError("cloud: no answer on :8443 after 20 s")
            time.sleep(0.1)

    def stop(self, lab) -> None:
        lab.procs.stop(self.name)

    def status(self, lab) -> dict:
        rec = lab.procs.get(self.name)
        running = self.running(lab)
        return {"host": HOST, "url": url(lab), "running": running, "pid": rec.pid if rec else None,
                "ca": str(ca_file(lab)), "answers": running and self._answers(lab)}


def run_cli(lab, args: list[str], *, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """`tenantprint cloud <args>` against the lab's database and KEK (root namespace: a file DB)."""
    _prepare(lab)
    return subprocess.run([sys.executable, "-m", "tenantprint", "cloud", *args], env=cloud_env(lab), cwd=REPO,
                          input=input, capture_output=True, text=True, timeout=timeout)


def _admin(lab):
    from cloud.admin import Admin
    from cloud.crypto import Keyring
    from cloud.storage import open_engine

    _prepare(lab)
    env = cloud_env(lab)
    return Admin(open_engine(env["TP_CLOUD_DB"]), Keyring(Path(env["TP_CLOUD_KEK_FILE"])))


def seed(lab, *, space: str = "space-1", orgs: dict[str, dict] | None = None, contracts: list[str] = (),
         devices: dict[str, bytes] | None = None, cards: dict[str, str] | None = None) -> None:
    """Make the directory hold `space`, the `orgs` (id -> wire profile), an active contract between
    `space` and each org in `contracts`, `devices` (id -> raw Ed25519 public key) registered in
    `space`, and `cards` (card id -> org; default: `lab.cards.LAB_CARDS`) registered in `space`
    for each org with an active contract there. Idempotent: what exists is kept, profiles are
    replaced."""
    from cloud.admin import AdminError
    from lab.cards import LAB_CARDS

    if cards is None:
        cards = {card: org for card, (org, _user) in LAB_CARDS.items()}

    admin = _admin(lab)
    try:
        if space not in {s["id"] for s in admin.list_spaces()}:
            admin.add_space(space)
        known = {o["id"] for o in admin.list_orgs()}
        for org, wire in (orgs or {}).items():
            if org not in known:
                admin.add_org(org)
            admin.set_profile(org, wire)
        active = {c["org_id"] for c in admin.list_contracts(space_id=space) if c["status"] == "active"}
        for org in contracts:
            if org not in active:
                admin.add_contract(org, space)
        enrolled = {d["id"] for d in admin.list_devices()}
        for dev, pub in (devices or {}).items():
            if dev not in enrolled:
                admin.register_device(space, dev, pub)
        active = {c["org_id"] for c in admin.list_contracts(space_id=space) if c["status"] == "active"}
        for card, org in cards.items():
            if org in active:
                admin.add_card(space, org, card)  # the same card and org again: a no-op
    except AdminError as exc:
        raise LabError(f"cloud seed: {exc}") from None
    finally:
        admin.engine.dispose()


def enrol_token(lab, device_id: str, space: str = "space-1", ttl_s: int = 3600) -> str:
    """A one-time token for the device to enrol itself (`hal.directory.client.enrol`)."""
    admin = _admin(lab)
    try:
        return admin.enrol_token(space, device_id, ttl_s)["token"]
    finally:
        admin.engine.dispose()


def space_ca_pem(lab, space: str = "space-1") -> str:
    """The space's device CA certificate (cloud/device_ca.py; made on first use), what orgs'
    gateways and RADIUS servers trust for the space's devices in certificate mode."""
    from cloud.device_ca import DeviceCA

    admin = _admin(lab)
    try:
        return DeviceCA(admin.engine, admin.keyring).ca_pem(space)
    finally:
        admin.engine.dispose()
