"""The firmware's check of a held job's owner proof (firmware/owner_proof.py), on real files."""

import hashlib
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from firmware.owner_proof import NonceRecord, check
from hal.printer import HeldJob
from hal.printer.job_proof import WINDOW_S, sign

KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
DOC = b"%PDF-1.4 alice's payslip"


def job(proof, user="alice", title="payslip.pdf"):
    return HeldJob(id=7, user=user, title=title, size_bytes=len(DOC), origin_host="10.20.0.50",
                   created=0.0, proof=proof)


def proof(user="alice", doc=DOC, issued=None):
    return sign(KEY, org="acme", user=user, title="payslip.pdf", document_sha256=hashlib.sha256(doc).digest(),
                issued=int(issued if issued is not None else time.time()))


def test_a_signed_job_is_ok_once(tmp_path):
    path = tmp_path / "d00007-001"
    path.write_bytes(DOC)
    nonces = NonceRecord(time.time)
    p = proof()
    assert check(job(p), path, org="acme", desk_keys=(PUB,), nonces=nonces, now=time.time()).verdict == "ok"
    assert check(job(p), path, org="acme", desk_keys=(PUB,), nonces=nonces, now=time.time()).verdict == "replayed"


def test_what_a_colleague_can_do_is_refused(tmp_path):
    path = tmp_path / "d00007-001"
    path.write_bytes(b"mallory's document")
    now = time.time()
    cases = {
        "no proof": (job(""), "malformed"),
        "alice's proof on another document": (job(proof()), "bad signature"),
        "bob's proof relabelled as alice": (job(proof(user="bob", doc=b"mallory's document")), "bad signature"),
        "an old proof": (job(proof(doc=b"mallory's document", issued=now - WINDOW_S - 5)), "expired"),
    }
    for name, (j, want) in cases.items():
        assert check(j, path, org="acme", desk_keys=(PUB,), nonces=NonceRecord(time.time), now=now).verdict == want, name
    good = job(proof(doc=b"mallory's document"))
    assert check(good, path, org="globex", desk_keys=(PUB,), nonces=NonceRecord(time.time), now=now).verdict == "bad signature"
    assert check(good, path, org="acme", desk_keys=(), nonces=NonceRecord(time.time), now=now).verdict == "no keys"
    assert check(good, None, org="acme", desk_keys=(PUB,), nonces=NonceRecord(time.time), now=now).verdict == "no document"


def test_the_nonce_record_forgets_after_twice_the_window():
    t = [1000.0]
    record = NonceRecord(lambda: t[0])
    record.add("n1")
    t[0] += 2 * WINDOW_S - 1
    assert "n1" in record
    t[0] += 2
    assert "n1" not in record and len(record) == 0


def test_a_redelivery_of_a_job_released_here_before_is_refused_and_named(tmp_path):
    from firmware.outcomes import ReleasedRecord

    path = tmp_path / "d00007-001"
    path.write_bytes(DOC)
    first = check(job(proof()), path, org="acme", desk_keys=(PUB,), nonces=NonceRecord(time.time), now=time.time())
    assert first.verdict == "ok" and first.delivery
    released = ReleasedRecord(time.time)
    released.add(first.delivery)
    # a redelivery signs a fresh proof; here the same one, its nonce unseen on a fresh record
    again = check(job(proof()), path, org="acme", desk_keys=(PUB,), nonces=NonceRecord(time.time), now=time.time(),
                  released=released)
    assert again.verdict == "ok" and again.delivery != first.delivery
    same = check(job(_proof_with_delivery(first.delivery)), path, org="acme", desk_keys=(PUB,),
                 nonces=NonceRecord(time.time), now=time.time(), released=released)
    assert (same.verdict, same.delivery) == ("already released", first.delivery)


def _proof_with_delivery(delivery: str) -> str:
    """A redelivery's proof (job_proof v2: a fresh nonce, the first delivery's id)."""
    return sign(KEY, org="acme", user="alice", title="payslip.pdf", document_sha256=hashlib.sha256(DOC).digest(),
                issued=int(time.time()), delivery=delivery)
