"""The directory client: enrolment and signed profile lookups over HTTPS (httpx, blocking).

    device = enrol("https://10.78.0.2:8443", token, key_dir, ca_file)   # once, on the device
    client = DirectoryClient(url, device.device_id, device.key_path, ca_file, timeout=5)
    profile = client.fetch_profile("acme")                             # SessionProfile
    org_id = client.card_org("card-04c0ffee5a1e01")                    # a UID-only card's org
    issued = client.device_certificate(csr_pem)                        # IssuedCertificate (unchecked:
                                                                       # hal/directory/device_cert.py)

The private key is generated here, on the device, and written to `key_dir/device.key` with mode
0600 (the directory is made 0700); only the public key leaves the device. With a TPM (`enrol(...,
tpm=)`) it is a P-256 key made inside the TPM, and `device.key` is only its reference (hal/tpm). `key_dir/device.json`
records the device id and the directory URL.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hal.directory import DirectoryMalformed, DirectoryRefused, DirectoryUnreachable
from hal.directory import CARD_ID_RE
from hal.directory.profile import ProfileError, SessionProfile
from hal.directory.signing import public_key_b64, sign_headers
from hal.tpm import TpmError

MAX_RESPONSE = 256 * 1024
_ORG_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KEY_FILE, DEVICE_FILE = "device.key", "device.json"
CARD_LOOKUP_PATH = "/v1/cards/lookup"
MAX_CARD_RESPONSE = 4096
CERTIFICATE_PATH = "/v1/device/certificate"
MAX_CERTIFICATE_RESPONSE = 32 * 1024


@dataclass(frozen=True)
class EnrolledDevice:
    device_id: str
    space_id: str
    key_path: Path


@dataclass(frozen=True)
class IssuedCertificate:
    """What the space's device CA answered: PEM texts as received, not yet checked."""
    certificate_pem: str
    ca_pem: str
    not_after: int  # unix seconds, as the cloud says


def _verify(ca_file: str | Path | None):
    # None: the system trust store. A path: only that CA (the lab's, or a private PKI).
    return True if ca_file is None else str(ca_file)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _post(url: str, body: dict, ca_file, timeout: float, http: httpx.Client | None) -> httpx.Response:
    try:
        if http is not None:
            return http.post(url, json=body, timeout=timeout)
        with httpx.Client(verify=_verify(ca_file), timeout=timeout) as own:
            return own.post(url, json=body)
    except httpx.HTTPError as exc:
        raise DirectoryUnreachable(f"directory {url}: {type(exc).__name__}") from None


def enrol(url: str, token: str, key_dir: str | Path, ca_file: str | Path | None = None,
          timeout: float = 10.0, *, http: httpx.Client | None = None, tpm=None) -> EnrolledDevice:
    """Make the device key pair in `key_dir`, enrol its public key with a one-time `token`.
    `http`: an httpx client to use instead of a new one (a test's in-process transport). `tpm` (a
    `hal.tpm.TpmConfig`): the key is a P-256 key made inside the TPM, `device.key` its reference
    (hal/tpm/signer.py); else an Ed25519 key file."""
    key_dir = Path(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(key_dir, 0o700)
    pending = key_dir / (KEY_FILE + ".pending")
    if tpm is not None:
        from hal.tpm.signer import make_cloud_key

        pending.unlink(missing_ok=True)
        try:
            make_cloud_key(pending, tpm)
            key = load_key(pending)
        except TpmError as exc:
            pending.unlink(missing_ok=True)
            raise DirectoryRefused(f"enrolment: the device key in the TPM: {exc}", 401) from None
    else:
        key = Ed25519PrivateKey.generate()
        _write_private(pending, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    resp = _post(url.rstrip("/") + "/v1/enrol", {"token": token, "public_key": public_key_b64(key)}, ca_file, timeout, http)
    if resp.status_code in (401, 403):
        pending.unlink(missing_ok=True)
        raise DirectoryRefused("enrolment refused (token unknown, used or expired)", resp.status_code)
    if resp.status_code >= 500 or resp.status_code == 429:  # down, or rate limited: try again later
        pending.unlink(missing_ok=True)
        raise DirectoryUnreachable(f"enrolment: directory answered {resp.status_code}")
    try:
        data = resp.json()
        device_id, space_id = data["device_id"], data["space_id"]
        if resp.status_code != 201 or not _ORG_ID.match(device_id) or not _ORG_ID.match(space_id):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        pending.unlink(missing_ok=True)
        raise DirectoryMalformed(f"enrolment: unexpected answer (HTTP {resp.status_code})") from None
    key_path = key_dir / KEY_FILE
    os.replace(pending, key_path)
    _write_private(key_dir / DEVICE_FILE,
                   json.dumps({"device_id": device_id, "space_id": space_id, "url": url}).encode())
    return EnrolledDevice(device_id, space_id, key_path)


def load_key(key_path: str | Path):
    """The device's signing key: an Ed25519 key file, or a signer for the P-256 key inside the TPM
    whose reference the file is (hal/tpm/signer.py). `DirectoryRefused` (401) when unusable."""
    from hal.tpm import read_ref

    try:
        ref = read_ref(key_path)
        if ref is not None:
            from hal.tpm.signer import TpmSigner

            return TpmSigner(ref)
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except TpmError as exc:
        raise DirectoryRefused(f"device key {key_path} (in the TPM) unusable: {exc}", 401) from None
    except (OSError, ValueError, TypeError) as exc:
        raise DirectoryRefused(f"device key {key_path} unusable: {type(exc).__name__}", 401) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise DirectoryRefused(f"device key {key_path} is not an Ed25519 key", 401)
    return key


# A kept-alive connection the directory closed while we were idle: sending on it fails at once.
_DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class DirectoryClient:
    """Signed profile lookups for one enrolled device. Thread-safe; keeps one connection pool.

    `warm()` opens the connection (TCP and TLS) ahead of a lookup, so that the lookup itself costs
    one round trip instead of three; `keepalive_s` is how long an idle connection is kept. With
    `max_connections=1` a lookup that comes while `warm()` is still connecting waits for that
    connection, which is always sooner than opening another."""

    def __init__(self, url: str, device_id: str, key_path: str | Path, ca_file: str | Path | None = None,
                 timeout: float = 5.0, *, keepalive_s: float = 5.0, max_connections: int | None = None,
                 http: httpx.Client | None = None):
        self.url = url.rstrip("/")
        self.device_id = device_id
        self._key = load_key(key_path)
        self._own_http = http is None
        self._http = http if http is not None else httpx.Client(
            verify=_verify(ca_file), timeout=timeout,
            limits=httpx.Limits(keepalive_expiry=keepalive_s, max_connections=max_connections))

    def warm(self) -> bool:
        """Open (or keep open) a connection to the directory with an unauthenticated health check.
        True when the directory answered; never raises."""
        try:
            return self._http.get(self.url + "/v1/health").status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def __enter__(self) -> "DirectoryClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, method: str, path: str, body: bytes, limit: int, what: str) -> tuple[httpx.Response, bytes]:
        # Signed per try: the directory refuses a nonce it has seen. The signature covers the body.
        try:
            headers = sign_headers(self._key, self.device_id, method, path, body)
        except TpmError as exc:  # the key in a TPM that is not there, or not this key's
            raise DirectoryRefused(f"the device key (in the TPM) cannot sign: {exc}", 401) from None
        extra = {}
        if body:
            headers["Content-Type"] = "application/json"
            extra["content"] = body
        with self._http.stream(method, self.url + path, headers=headers, **extra) as resp:
            answer = b""
            for chunk in resp.iter_bytes():
                answer += chunk
                if len(answer) > limit:
                    raise DirectoryMalformed(f"{what}: answer larger than {limit} bytes")
        return resp, answer

    def _exchange(self, method: str, path: str, body: bytes, limit: int, what: str, refused: str) -> bytes:
        """The answer of a 200; the directory's refusals and failures as the Directory errors
        (`refused`: what its 403 means here)."""
        try:
            try:
                resp, answer = self._request(method, path, body, limit, what)
            except _DROPPED:
                # The kept connection was closed under us (the directory restarted, or its idle
                # timeout won the race): once more, on a new connection.
                resp, answer = self._request(method, path, body, limit, what)
        except httpx.HTTPError as exc:
            raise DirectoryUnreachable(f"directory {self.url}: {type(exc).__name__}") from None
        if resp.status_code == 401:
            raise DirectoryRefused("the directory does not recognise this device (revoked, unknown, clock skew)", 401)
        if resp.status_code == 403:
            raise DirectoryRefused(refused, 403)
        if resp.status_code >= 500 or resp.status_code == 429:
            raise DirectoryUnreachable(f"directory answered {resp.status_code}")
        if resp.status_code != 200:
            raise DirectoryMalformed(f"{what}: unexpected HTTP {resp.status_code}")
        return answer

    def end_sessions(self, org_id: str | None) -> int:
        """Tell the directory the device's session with `org_id` ended (None: every session, at the
        daemon's start); how many it held open (cloud/sessions.py)."""
        if org_id is not None and (not isinstance(org_id, str) or not _ORG_ID.match(org_id)):
            raise DirectoryRefused("org id is not valid", 403)
        answer = self._exchange("POST", "/v1/device/sessions/end", json.dumps({"org_id": org_id}).encode(), 4096,
                                "session end", "session end refused")
        try:
            return int(json.loads(answer)["ended"])
        except (ValueError, KeyError, TypeError):
            raise DirectoryMalformed("session end: not the directory's answer") from None

    def fetch_profile(self, org_id: str) -> SessionProfile:
        if not isinstance(org_id, str) or not _ORG_ID.match(org_id):
            raise DirectoryRefused("org id is not valid", 403)
        body = self._exchange("GET", f"/v1/orgs/{org_id}/profile", b"", MAX_RESPONSE, f"profile for {org_id}",
                              f"no contract with org {org_id}")
        try:
            wire = json.loads(body)
            profile = SessionProfile.from_wire(wire)
        except (ValueError, ProfileError) as exc:
            # ProfileError messages name fields only; a JSON error's message could quote the body.
            detail = str(exc) if isinstance(exc, ProfileError) else "not JSON"
            raise DirectoryMalformed(f"profile for {org_id}: {detail}") from None
        finally:
            body = b""
        if profile.org_id != org_id:
            profile.wipe()
            raise DirectoryMalformed(f"profile for {org_id}: answer is for another org")
        return profile

    # -- cards known by their UID only: the space's card directory ---------------------------

    def card_org(self, card: str) -> str:
        """The org id `card` (a card id matching `CARD_ID_RE`) is registered to in this device's
        space. `DirectoryRefused` 403: not registered there, or its org has no contract with the
        space (one answer for both); 401 as `fetch_profile`. Messages never carry the card id."""
        if not isinstance(card, str) or not CARD_ID_RE.fullmatch(card):
            raise DirectoryRefused("card id is not valid", 403)
        body = json.dumps({"card": card}, separators=(",", ":")).encode()
        answer = self._exchange("POST", CARD_LOOKUP_PATH, body, MAX_CARD_RESPONSE, "card lookup",
                                "card not registered in this space")
        try:
            data = json.loads(answer)
        except ValueError:
            raise DirectoryMalformed("card lookup: not JSON") from None
        org_id = data.get("org_id") if isinstance(data, dict) and data.keys() == {"org_id"} else None
        if not isinstance(org_id, str) or not _ORG_ID.fullmatch(org_id):
            raise DirectoryMalformed("card lookup: answer is not an org id")
        return org_id

    # -- the device's certificate from its space's CA ----------------------------------------

    def device_certificate(self, csr_pem: str) -> IssuedCertificate:
        """Ask the space's device CA to certify the key of `csr_pem` (a P-256 CSR) for this
        device. The answer is only parsed here: check it (`device_cert.verify_issued`) before
        use. `DirectoryRefused` 403: the CSR was not accepted; 401 as `fetch_profile` (a revoked
        device gets no certificate); `DirectoryUnreachable` also for 429 (too many requests)."""
        if not isinstance(csr_pem, str) or not csr_pem:
            raise DirectoryRefused("no certificate request", 403)
        body = json.dumps({"csr_pem": csr_pem}, separators=(",", ":")).encode()
        answer = self._exchange("POST", CERTIFICATE_PATH, body, MAX_CERTIFICATE_RESPONSE, "certificate",
                                "certificate request refused (CSR not accepted)")
        try:
            data = json.loads(answer)
        except ValueError:
            raise DirectoryMalformed("certificate: not JSON") from None
        if not (isinstance(data, dict) and data.keys() == {"certificate_pem", "ca_pem", "not_after"}
                and isinstance(data["certificate_pem"], str) and isinstance(data["ca_pem"], str)
                and isinstance(data["not_after"], int) and not isinstance(data["not_after"], bool)):
            raise DirectoryMalformed("certificate: unexpected answer")
        return IssuedCertificate(data["certificate_pem"], data["ca_pem"], data["not_after"])
