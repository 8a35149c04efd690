"""The desk's own cupsd over its local socket, for the holding queue (org/desk_holding.py).

One IPP request per connection, bounded (the answer: MAX_ANSWER bytes; the whole exchange: one
deadline). Two kinds of caller:

- the desk backend, running as root under cupsd, puts a copy of the job it delivered into the
  holding queue (`submit_copy`). Without credentials on purpose: cupsd makes an authenticated
  request's user the job's owner (root), and the copy must stay its user's job (same owner, so the
  user sees and may cancel it; the desk's policy must let local clients submit to the holding queue
  without authentication, as CUPS's default policy does);
- the desk agent, as root with peer credentials (`Authorization: PeerCred root` over the socket:
  cupsd checks it against the socket's peer), lists, moves, releases, holds and cancels jobs.

Why not pycups: libcups keeps a process-global server setting, and pycups leaks answers of the reads
a daemon repeats for months (hal/printer/ipp.py says more).
"""

from __future__ import annotations

import http.client
import socket
import struct
import time

from hal.printer.ipp import IppError, decode_response, encode_attribute
from org.desk_holding import (DELIVERY_ATTRIBUTE, FORMAT_ATTRIBUTE, HELD_QUEUE, KEPT_MESSAGE, SESSION_ATTRIBUTE,
                              TAG_ATTRIBUTE, DeliveryNote, HeldCopy, tag_first, valid_session)

PRINT_JOB, CANCEL_JOB, GET_JOBS, HOLD_JOB, RELEASE_JOB = 0x0002, 0x0008, 0x000A, 0x000C, 0x000D
GET_PRINTER_ATTRIBUTES, SET_JOB_ATTRIBUTES, CUPS_MOVE_JOB = 0x000B, 0x0014, 0x400D
NOT_FOUND = 0x0406
MAX_ANSWER = 4 << 20  # a Get-Jobs answer of the holding queue: ~400 bytes a job
MAX_JOBS = 5000  # jobs one Get-Jobs asks for
_CHUNK = 64 * 1024
_JOB_GROUP = 0x02
_HELD = 4  # job-state
_CANCELED = 7


class DeskCupsError(Exception):
    """The desk's cupsd could not be reached or did not do what was asked."""


class DeskCupsNotFound(DeskCupsError):
    """The queue or job asked about does not exist."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _header(operation: int, target_uri: str, user: str, request_id: int = 1) -> bytes:
    """Operation attributes up to requesting-user-name; `target_uri` a printer's or a job's URI."""
    out = struct.pack(">BBHI", 2, 0, operation, request_id) + b"\x01"
    out += encode_attribute(0x47, "attributes-charset", b"utf-8")
    out += encode_attribute(0x48, "attributes-natural-language", b"en")
    kind = "job-uri" if "/jobs/" in target_uri else "printer-uri"
    out += encode_attribute(0x45, kind, target_uri.encode())
    return out + encode_attribute(0x42, "requesting-user-name", _name(user))


def _int(name: str, value: int) -> bytes:
    return encode_attribute(0x21, name, struct.pack(">i", value))


def _name(value: str) -> bytes:
    """An IPP name: at most 255 octets, cut on a character boundary."""
    return value.encode("utf-8", "replace")[:255].decode("utf-8", "ignore").encode()


class DeskCups:
    """The desk cupsd at the local socket `path` (`CUPS_SERVER` of a backend, /run/cups/cups.sock)."""

    def __init__(self, path: str, timeout_s: float = 10.0):
        self.path = path
        self.timeout_s = timeout_s

    def printer_uri(self, queue: str) -> str:
        return f"ipp://localhost/printers/{queue}"

    def _request(self, body: bytes, document=None, size: int = 0, admin: bool = True):
        """One request (and `size` bytes of `document` after it); the decoded answer. IPP errors
        raise DeskCupsError (DeskCupsNotFound for not-found)."""
        end = time.monotonic() + self.timeout_s
        conn = _UnixConnection(self.path, self.timeout_s)
        headers = {"Content-Type": "application/ipp", "Content-Length": str(len(body) + size)}
        if admin:
            headers["Authorization"] = "PeerCred root"
        try:
            conn.connect()
            conn.putrequest("POST", "/", skip_accept_encoding=True)
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders()
            conn.send(body)
            while document is not None and (chunk := document.read(_CHUNK)):
                conn.sock.settimeout(max(0.001, end - time.monotonic()))
                conn.send(chunk)
            conn.sock.settimeout(max(0.001, end - time.monotonic()))
            resp = conn.getresponse()
            data = resp.read(MAX_ANSWER + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise DeskCupsError(f"desk CUPS at {self.path}: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
        if resp.status != 200:
            raise DeskCupsError(f"desk CUPS answered HTTP {resp.status}")
        if len(data) > MAX_ANSWER:
            raise DeskCupsError(f"desk CUPS answer larger than {MAX_ANSWER} bytes")
        try:
            answer = decode_response(data)
        except IppError as exc:
            raise DeskCupsError(f"desk CUPS answer: {exc}") from None
        if answer.status == NOT_FOUND:
            raise DeskCupsNotFound("not found")
        if answer.status > 0x00FF:
            raise DeskCupsError(f"desk CUPS: IPP status 0x{answer.status:04x}")
        return answer

    # -- the backend's side --------------------------------------------------------------------

    def submit_copy(self, *, user: str, title: str, document, size: int, attributes: dict[str, str],
                    copies: int = 1, queue: str = HELD_QUEUE) -> int:
        """Put a held, raw copy of a delivered job into the holding queue as `user` (no credentials:
        the job stays the user's). Returns the copy's job id."""
        body = _header(PRINT_JOB, self.printer_uri(queue), user)
        body += encode_attribute(0x42, "job-name", _name(title))
        body += encode_attribute(0x49, "document-format", b"application/vnd.cups-raw")
        body += bytes([_JOB_GROUP]) + encode_attribute(0x44, "job-hold-until", b"indefinite")
        body += encode_attribute(0x41, "job-printer-state-message", KEPT_MESSAGE.encode())
        if copies > 1:
            body += _int("copies", copies)
        for name, value in attributes.items():
            if any(ch.isspace() for ch in value):
                raise ValueError(f"{name}: white space in a custom job attribute crashes Debian 12's cupsd")
            body += encode_attribute(0x41, name, value.encode())
        answer = self._request(body + b"\x03", document, size, admin=False)
        job = answer.attributes.get("job-id", [None])[0]
        if not isinstance(job, int):
            raise DeskCupsError("desk CUPS took the copy but named no job")
        return job

    # -- the agent's side ----------------------------------------------------------------------

    def held_copies(self, queue: str = HELD_QUEUE) -> list[HeldCopy]:
        """The unfinished jobs of the holding queue (DeskCupsNotFound when it does not exist)."""
        body = _header(GET_JOBS, self.printer_uri(queue), "root") + _int("limit", MAX_JOBS)
        wanted = ["job-id", "job-state", "job-originating-user-name", "job-name", "time-at-creation", "time-at-processing",
                  DELIVERY_ATTRIBUTE, SESSION_ATTRIBUTE, TAG_ATTRIBUTE, FORMAT_ATTRIBUTE]
        for i, name in enumerate(wanted):
            body += encode_attribute(0x44, "" if i else "requested-attributes", name.encode())
        answer = self._request(body + b"\x03")
        out = []
        for tag, a in answer.groups:
            if tag != _JOB_GROUP or not isinstance(a.get("job-id", [None])[0], int):
                continue
            out.append(_copy(a))
        return out

    def canceled_copies(self, queue: str = HELD_QUEUE) -> list[HeldCopy]:
        """The holding queue's jobs that ended cancelled (deleted by their owner at the printer,
        expired there, or too old), as CUPS keeps them in its history."""
        body = _header(GET_JOBS, self.printer_uri(queue), "root") + _int("limit", MAX_JOBS)
        body += encode_attribute(0x44, "which-jobs", b"completed")
        for i, name in enumerate(["job-id", "job-state", "job-originating-user-name", "job-name"]):
            body += encode_attribute(0x44, "" if i else "requested-attributes", name.encode())
        answer = self._request(body + b"\x03")
        return [_copy(a) for tag, a in answer.groups
                if tag == _JOB_GROUP and isinstance(a.get("job-id", [None])[0], int)
                and a.get("job-state", [None])[0] == _CANCELED]

    def queue_jobs(self, queue: str) -> list[int]:
        """The ids of `queue`'s unfinished jobs."""
        body = _header(GET_JOBS, self.printer_uri(queue), "root") + _int("limit", MAX_JOBS)
        body += encode_attribute(0x44, "requested-attributes", b"job-id")
        try:
            answer = self._request(body + b"\x03")
        except DeskCupsNotFound:
            return []
        return [a["job-id"][0] for tag, a in answer.groups if tag == _JOB_GROUP and a.get("job-id")]

    def printer(self, queue: str, wanted: list[str]) -> dict[str, list]:
        body = _header(GET_PRINTER_ATTRIBUTES, self.printer_uri(queue), "root")
        for i, name in enumerate(wanted):
            body += encode_attribute(0x44, "" if i else "requested-attributes", name.encode())
        return self._request(body + b"\x03").attributes

    def _job_op(self, operation: int, job_id: int, extra: bytes = b"", job_group: bytes = b"") -> None:
        body = _header(operation, f"ipp://localhost/jobs/{int(job_id)}", "root") + extra
        if job_group:
            body += bytes([_JOB_GROUP]) + job_group
        self._request(body + b"\x03")

    def move(self, job_id: int, queue: str) -> None:
        """CUPS-Move-Job to `queue` (a processing job is stopped first, by cupsd)."""
        self._job_op(CUPS_MOVE_JOB, job_id, job_group=encode_attribute(0x45, "job-printer-uri",
                                                                       self.printer_uri(queue).encode()))

    def release(self, job_id: int) -> None:
        self._job_op(RELEASE_JOB, job_id)

    def hold(self, job_id: int) -> None:
        self._job_op(HOLD_JOB, job_id)

    def purge(self, job_id: int) -> None:
        """Cancel the job and forget it (no history)."""
        self._job_op(CANCEL_JOB, job_id, encode_attribute(0x22, "purge-job", b"\x01"))

    def cancel(self, copy: HeldCopy, reason: str) -> None:
        """Cancel a copy with `reason` as its job-printer-state-message (what `lpstat -l` shows).

        Only on a job no backend ever ran for: cupsd 2.4.2 keeps a pointer to the attribute once a
        job started (`job->printer_message`), and Set-Job-Attributes frees the old one: a job that
        ran once (moved back from an MFP queue) is cancelled without the message."""
        if not copy.processed:
            self._job_op(SET_JOB_ATTRIBUTES, copy.job_id,
                         job_group=encode_attribute(0x41, "job-printer-state-message", reason.encode()[:255]))
        self._job_op(CANCEL_JOB, copy.job_id)


def _copy(a: dict[str, list]) -> HeldCopy:
    def one(name, default=None):
        return (a.get(name) or [default])[0]

    note = DeliveryNote.parse(one(DELIVERY_ATTRIBUTE))
    created = one("time-at-creation", 0)
    first = tag_first(one(TAG_ATTRIBUTE)) if note is not None else None
    if first is None:
        first = created if isinstance(created, int) else 0
    processed = isinstance(one("time-at-processing"), int) and one("time-at-processing") > 0
    user, title = one("job-originating-user-name", ""), one("job-name", "")
    return HeldCopy(one("job-id"), user if isinstance(user, str) else "", title if isinstance(title, str) else "",
                    note, valid_session(one(SESSION_ATTRIBUTE)), float(first), processed, one("job-state") == _HELD)
