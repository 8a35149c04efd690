"""Fixtures of the cloud tests: every test runs on SQLite and on a private PostgreSQL 15."""

from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from prereq import need

PG_BIN = Path("/usr/lib/postgresql/15/bin")
CANARY = "TPCANARY-cloudtest-"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_server():
    """A private PostgreSQL 15 on 127.0.0.1 (high port; socket in its temp dir), as user
    postgres; stopped by PID at the end. Yields the server's base URL."""
    need(os.geteuid() == 0, "root (to run PostgreSQL as user postgres)")
    need((PG_BIN / "initdb").exists() and (PG_BIN / "postgres").exists(), "PostgreSQL 15 binaries")
    base = Path(tempfile.mkdtemp(prefix="tpc-pg-"))
    shutil.chown(base, "postgres", "postgres")
    data = base / "data"
    subprocess.run([PG_BIN / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
                   user="postgres", check=True, capture_output=True, cwd=base)
    port = free_port()
    log = open(base / "postgres.log", "wb")
    proc = subprocess.Popen(
        [PG_BIN / "postgres", "-D", data, "-k", base, "-h", "127.0.0.1", "-p", str(port),
         "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
        user="postgres", stdout=log, stderr=subprocess.STDOUT, cwd=base, start_new_session=True)
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    import psycopg
    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", connect_timeout=1).close()
            break
        except psycopg.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"private PostgreSQL did not start: {(base / 'postgres.log').read_text()[-2000:]}")
            time.sleep(0.1)
    try:
        yield {"url": url, "port": port}
    finally:
        proc.send_signal(2)  # SIGINT: fast shutdown
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def _pg_admin(port: int, sql: str) -> None:
    import psycopg
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(sql)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cloud.db'}"
        return
    pg = request.getfixturevalue("pg_server")
    name = "t_" + uuid.uuid4().hex[:12]
    _pg_admin(pg["port"], f"CREATE DATABASE {name}")
    yield f"{pg['url']}/{name}"
    _pg_admin(pg["port"], f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def kek_file(tmp_path):
    from cloud.crypto import new_kek, write_kek_file
    path = tmp_path / "kek"
    write_kek_file(path, [new_kek()])
    return path


def wire_profile(org: str, *, auth: str = "psk") -> dict:
    """A valid wire profile whose secrets all contain CANARY."""
    vpn = {"gateway": "10.78.0.11", "port": 500, "local_id": "mfp-1.space-1", "remote_id": f"gw.{org}",
           "auth": "psk", "psk": f"{CANARY}{org}-psk-{uuid.uuid4().hex}", "ca_cert_pem": None,
           "ike_proposals": ["aes256gcm16-prfsha384-x25519"], "esp_proposals": ["aes256gcm16"],
           "remote_ts": ["10.20.0.0/24"], "dpd_delay_s": 1}
    return {"org_id": org, "ttl_s": 300, "vpn": vpn,
            "auth": {"kind": "radius", "host": "10.20.0.50", "port": 1812,
                     "secret": f"{CANARY}{org}-radius-{uuid.uuid4().hex}",
                     "user_format": "{user}@{org}", "timeout_s": 3.0, "retries": 2},
            "policy": {"idle_timeout_s": 300, "max_hold_s": 3600, "combined_mode": False}}


class Cloud:
    """An in-process directory on one database: admin, app, an httpx TestClient, an enrolled device."""

    def __init__(self, db_url: str, kek_file: Path, key_dir: Path):
        from fastapi.testclient import TestClient

        from cloud.admin import Admin
        from cloud.api import create_app
        from cloud.crypto import Keyring
        from cloud.storage import migrate, open_engine

        self.db_url, self.kek_file = db_url, kek_file
        self.engine = open_engine(db_url)
        migrate(self.engine)
        self.keyring = Keyring(kek_file)
        self.admin = Admin(self.engine, Keyring(kek_file))
        self.app = create_app(self.engine, self.keyring)
        self.http = TestClient(self.app, base_url="http://testserver", raise_server_exceptions=False)
        self.profiles = {o: wire_profile(o) for o in ("acme", "globex", "initech")}
        self.admin.add_space("space-1")
        self.admin.add_space("space-2")
        for org, wire in self.profiles.items():
            self.admin.add_org(org)
            self.admin.set_profile(org, copy.deepcopy(wire))
        self.admin.add_contract("acme", "space-1")
        self.admin.add_contract("globex", "space-1")
        self.admin.add_contract("initech", "space-2")  # a contract, but with another space
        self.key_dir = key_dir

    def reconfigure(self, config: dict) -> None:
        """Serve the same database with `config` (cloud/config.py sections, e.g. `{"server":
        {"api_docs": True}}`) in place of the defaults: a new app and test client."""
        from fastapi.testclient import TestClient

        from cloud.api import create_app
        from cloud.config import from_dict
        self.http.close()
        self.app = create_app(self.engine, self.keyring, config=from_dict(config))
        self.http = TestClient(self.app, base_url="http://testserver", raise_server_exceptions=False)

    def enrol(self, device_id: str = "mfp-1.space-1", space: str = "space-1", key_dir: Path | None = None):
        from hal.directory.client import enrol
        token = self.admin.enrol_token(space, device_id)["token"]
        return enrol("http://testserver", token, key_dir or self.key_dir / device_id, http=self.http)

    def client(self, device):
        from hal.directory.client import DirectoryClient
        return DirectoryClient("http://testserver", device.device_id, device.key_path, http=self.http)

    def close(self) -> None:
        self.http.close()
        self.engine.dispose()


@pytest.fixture
def cloud(db_url, kek_file, tmp_path):
    c = Cloud(db_url, kek_file, tmp_path / "keys")
    yield c
    c.close()
