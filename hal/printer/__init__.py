"""hal/printer: the MFP's session print service — where an organization's jobs wait for release.

A private cupsd per session, everything it writes inside the session tmpfs (`cupsd.py`). Two
queues: the inbound queue `tenantprint` that desk PCs print to through the tunnel, STOPPED but
accepting (a job's own `job-hold-until` is never trusted: a queue-level hold does not hold), and the
non-shared release queue `tenantprint-release` in front of the print engine. Releasing a job moves it
from one to the other. Only the firmware (root over the local socket) may operate on jobs or queues;
remote clients may only submit a job in one request (Print-Job, Validate-Job) and read printer
attributes: every other IPP operation is refused (the policy in `cupsd.py`).

Job events: a job is held once it arrived whole; a held job whose document count changes is purged
(`JobGone(id, "documents changed")`); a released job is printed only when cupsd says `completed`,
and one that ends otherwise or vanishes is gone (`JobGone`), never printed.

Blocking (pycups): the firmware calls these from a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass

INBOUND_QUEUE = "tenantprint"
RELEASE_QUEUE = "tenantprint-release"
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


@dataclass(frozen=True)
class JobHeld:
    job: HeldJob


@dataclass(frozen=True)
class JobPrinted:
    job_id: int


@dataclass(frozen=True)
class JobGone:
    job_id: int
    reason: str


JobEvent = JobHeld | JobPrinted | JobGone


class PrinterError(Exception):
    """A print service operation failed; the message says which and why."""


class PrintServiceDown(PrinterError):
    """The session cupsd is not running or does not answer."""


class JobNotFound(PrinterError):
    """No such job in the session print service."""


class EngineUnavailable(PrinterError):
    """The print engine could not be set up as the release queue's device."""


class ConfigError(PrinterError):
    """The print service cannot be configured as asked (bad address, unusable directory)."""
