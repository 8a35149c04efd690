"""`tenantprint cloud serve` as a real process on loopback with TLS: a device enrols and looks up
through hal/directory, on SQLite and on PostgreSQL (two worker processes on one database)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import Cloud, free_port
from hal.directory import DirectoryRefused, DirectoryUnreachable
from hal.directory.client import DirectoryClient, enrol
from lab.services.cloud import make_tls

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(db_url, kek_file, tmp_path):
    seeded = Cloud(db_url, kek_file, tmp_path / "unused")  # schema + orgs + contracts
    tls = make_tls(tmp_path / "tls", ["127.0.0.1"])
    port = free_port()
    config = tmp_path / "cloud.toml"  # 120 concurrent lookups of one device: over its default limits
    config.write_text("[limits]\ndevice_per_min = 60000\ndevice_burst = 1000\n"
                      "source_per_min = 60000\nsource_burst = 1000\n")
    env = {"PATH": os.environ["PATH"], "TP_CLOUD_DB": db_url, "TP_CLOUD_KEK_FILE": str(kek_file),
           "TP_CLOUD_CONFIG": str(config)}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tenantprint", "cloud", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "2", "--tls-cert", str(tls["server"]),
                             "--tls-key", str(tls["server-key"])],
                            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/v1/health", verify=str(tls["ca"]), timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("serve did not answer: " + (tmp_path / "serve.log").read_text()[-2000:])
        time.sleep(0.1)
    try:
        yield seeded, url, tls
    finally:
        os.killpg(proc.pid, 15)  # our own child's session only
        proc.wait(15)
        log.close()
        seeded.close()


def test_enrol_and_lookup_over_tls(served, tmp_path):
    seeded, url, tls = served
    token = seeded.admin.enrol_token("space-1", "mfp-1.space-1")["token"]
    dev = enrol(url, token, tmp_path / "device", ca_file=tls["ca"])
    with DirectoryClient(url, dev.device_id, dev.key_path, tls["ca"], timeout=5) as client:
        for _ in range(5):  # several requests: both workers, one shared nonce store
            profile = client.fetch_profile("acme")
            assert profile.vpn.psk.reveal().decode() == seeded.profiles["acme"]["vpn"]["psk"]
            profile.wipe()
        with pytest.raises(DirectoryRefused):
            client.fetch_profile("initech")
    # a client that does not trust the lab CA does not talk to it
    with DirectoryClient(url, dev.device_id, dev.key_path, None, timeout=5) as untrusting:
        with pytest.raises(DirectoryUnreachable):
            untrusting.fetch_profile("acme")
    outcomes = [(e["org_id"], e["outcome"]) for e in seeded.admin.audit(device_id=dev.device_id)]
    assert outcomes.count(("acme", "granted")) == 5 and ("initech", "refused") in outcomes


def test_unreachable_directory(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    key = tmp_path / "k"
    key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with DirectoryClient(f"https://127.0.0.1:{free_port()}", "mfp", key, None, timeout=1) as client:
        with pytest.raises(DirectoryUnreachable):
            client.fetch_profile("acme")


def test_concurrent_lookups_on_two_workers_share_nonces_and_audit(served, tmp_path):
    """Concurrent signed lookups from many connections (so both worker processes write at once):
    every one is answered (no database-busy 503), each has exactly one audit record, and each
    request replayed on a fresh connection (whichever worker takes it) is refused."""
    import threading

    from hal.directory.client import load_key
    from hal.directory.signing import sign_headers

    seeded, url, tls = served
    token = seeded.admin.enrol_token("space-1", "mfp-1.space-1")["token"]
    dev = enrol(url, token, tmp_path / "device", ca_file=tls["ca"])
    key, path = load_key(dev.key_path), "/v1/orgs/acme/profile"
    statuses, sent, lock = [], [], threading.Lock()

    def run():
        with httpx.Client(base_url=url, verify=str(tls["ca"]), timeout=10) as http:
            for _ in range(15):
                headers = sign_headers(key, dev.device_id, "GET", path, b"")
                r = http.get(path, headers=headers)
                with lock:
                    statuses.append(r.status_code)
                    sent.append(headers)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 120
    for headers in sent[:6]:
        with httpx.Client(base_url=url, verify=str(tls["ca"]), timeout=10) as http:
            assert http.get(path, headers=headers).status_code == 401
    outcomes = [e["outcome"] for e in seeded.admin.audit(device_id=dev.device_id, limit=1000)
                if e["action"] == "lookup"]
    assert outcomes.count("granted") == 120 and outcomes.count("replay") == 6 and len(outcomes) == 126


def test_warm_connection_carries_the_lookup(served, tmp_path):
    """warm() opens the TLS connection; the signed lookup then goes over it (one round trip)."""
    seeded, url, tls = served
    token = seeded.admin.enrol_token("space-1", "mfp-1.space-1")["token"]
    dev = enrol(url, token, tmp_path / "device", ca_file=tls["ca"])
    ports = []

    def note_port(resp: httpx.Response) -> None:
        ports.append(resp.extensions["network_stream"].get_extra_info("client_addr")[1])

    http = httpx.Client(verify=str(tls["ca"]), timeout=5, limits=httpx.Limits(keepalive_expiry=60),
                        event_hooks={"response": [note_port]})
    with DirectoryClient(url, dev.device_id, dev.key_path, http=http) as client:
        assert client.warm()
        profile = client.fetch_profile("acme")
        profile.wipe()
    http.close()
    assert len(ports) == 2 and ports[0] == ports[1]


def test_lookup_retries_once_when_the_kept_connection_was_dropped(cloud):
    """A kept-alive connection the directory closed while idle: the lookup is signed again and
    sent on a new connection; a second failure is the directory being unreachable."""
    device = cloud.enrol()
    failures = []

    def flaky(request: httpx.Request) -> httpx.Response:
        if failures and failures[0] > 0:
            failures[0] -= 1
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        resp = cloud.http.get(request.url.path, headers=dict(request.headers))
        return httpx.Response(resp.status_code, headers=resp.headers, content=resp.content)

    http = httpx.Client(transport=httpx.MockTransport(flaky), base_url="http://testserver")
    client = DirectoryClient("http://testserver", device.device_id, device.key_path, http=http)
    failures[:] = [1]
    client.fetch_profile("acme").wipe()  # the retry carries a fresh nonce: the directory takes it
    failures[:] = [2]
    with pytest.raises(DirectoryUnreachable):
        client.fetch_profile("acme")
    http.close()
