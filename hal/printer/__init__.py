"""hal/printer: where an organization's jobs wait for release, and the engine that prints them.

The session print service: a private cupsd per session, everything it writes inside the session
tmpfs (`cupsd.py`), with one queue, `tenantprint`, that desk PCs print to through the tunnel: STOPPED
but accepting (a job's own `job-hold-until` is never trusted: a queue-level hold does not hold).
Only the firmware (root over the local socket) may operate on jobs or queues; remote clients may
only submit a job in one request (Print-Job, Validate-Job) and read printer attributes: every other
IPP operation is refused (the policy in `cupsd.py`).

Job events (`jobs.py`): a job is held once it arrived whole; a held job whose document count changes
is purged (`JobGone(id, "documents changed")`); a released job is handed over: its document copied
into the engine spool and the job purged from the session cupsd.

The print engine (`engine.py`): the device's printer, shared by all sessions, with the spool of
released documents; it prints them in release order and says how each ended (printed only when the
engine says `completed`).

Blocking (pycups, IPP): the firmware calls these from worker threads.
"""

from __future__ import annotations

from dataclasses import dataclass

INBOUND_QUEUE = "tenantprint"
HELD_MESSAGE = "held for release at the printer"  # the inbound queue's state message
PROOF_ATTRIBUTE = "tenantprint-owner-proof"  # a text job attribute in Print-Job's job group


@dataclass(frozen=True)
class HeldJob:
    id: int
    user: str  # requesting user name (a claim of the desk PC inside the org's LAN)
    title: str
    size_bytes: int
    origin_host: str  # the IP the job came from (HostNameLookups Off)
    created: float  # unix time
    proof: str = ""  # the job attribute PROOF_ATTRIBUTE as the desk's backend attached it ("" if none)
    document_format: str = "application/octet-stream"  # as the desk sent it


@dataclass(frozen=True)
class JobHeld:
    job: HeldJob


@dataclass(frozen=True)
class JobGone:
    job_id: int
    reason: str


JobEvent = JobHeld | JobGone


class PrinterError(Exception):
    """A print service operation failed; the message says which and why."""


class PrintServiceDown(PrinterError):
    """The session cupsd is not running or does not answer."""


class JobNotFound(PrinterError):
    """No such job in the session print service."""


class EngineUnavailable(PrinterError):
    """The session queue could not take its model from the print engine."""


class ConfigError(PrinterError):
    """The print service cannot be configured as asked (bad address, unusable directory)."""
