"""Whether a held job's owner is proven: the firmware's side of `hal/printer/job_proof.py`.

The desk's backend signs (org, user, title, SHA-256 of the document) with the org's desk key; here
the MFP reads the job's proof attribute and its one spooled document, and checks the signature
with the public desk keys of the org's profile. The machine takes a job only when this says "ok"
(`JobArrived.proof`); anything else is the reason it was refused, for the journal.

The nonce record is the device's, not the session's: a proof read off an org's LAN cannot be
replayed into a later session of that org either. Entries older than twice the proof window are
dropped (older proofs are refused as expired anyway).
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Iterator, MutableSet
from dataclasses import dataclass
from pathlib import Path

from hal.printer import HeldJob
from hal.printer.job_proof import WINDOW_S, verify

_CHUNK = 1 << 20


class NonceRecord(MutableSet):
    """The nonces of proofs accepted on this device, forgotten after 2 x WINDOW_S."""

    def __init__(self, clock):
        self._clock = clock
        self._seen: dict[str, float] = {}

    def _prune(self) -> None:
        horizon = self._clock() - 2 * WINDOW_S
        for nonce in [n for n, t in self._seen.items() if t < horizon]:
            del self._seen[nonce]

    def __contains__(self, nonce: object) -> bool:
        self._prune()
        return nonce in self._seen

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._seen))

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, nonce: str) -> None:
        self._seen[nonce] = self._clock()

    def discard(self, nonce: str) -> None:
        self._seen.pop(nonce, None)


def document_sha256(path: Path | None) -> bytes | None:
    """SHA-256 of a spooled document, read in chunks (None when there is not exactly one)."""
    if path is None:
        return None
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.digest()


@dataclass(frozen=True)
class OwnerCheck:
    verdict: str  # "ok", or why not
    delivery: str | None = None  # the job's delivery id (firmware/outcomes.py), once the proof verified


def check(job: HeldJob, document: Path | None, *, org: str, desk_keys, nonces: MutableSet, now: float,
          released: Container[str] = ()) -> OwnerCheck:
    """"ok" when the job's proof shows that `job.user` of `org` sent exactly this document and title;
    otherwise why not ("no document", "malformed", "bad signature", "expired", "replayed", ...).
    "already released" / "already printed": a valid redelivery of a job this device released before
    (`released`: the device's `ReleasedRecord`, or any container of delivery ids): its report was
    lost, it must not print twice. "retry": a valid redelivery of a job the engine did not print
    (held like "ok", but released only by its owner's own act, never by combined mode)."""
    digest = document_sha256(document)
    if digest is None:
        return OwnerCheck("no document")
    result = verify(job.proof, desk_keys, org=org, user=job.user, title=job.title, document_sha256=digest,
                    now=now, seen_nonces=nonces)
    if not result.valid:
        return OwnerCheck(result.reason.value)
    delivery = result.delivery
    recorded = released.state(delivery) if hasattr(released, "state") else (
        "released" if delivery in released else None)
    if recorded == "failed":  # the engine did not print it: held for its owner to release again
        return OwnerCheck("retry", delivery)
    return OwnerCheck(f"already {recorded}" if recorded else "ok", delivery)
