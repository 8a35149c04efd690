"""The owner proof of a job (hal/printer/job_proof.py, v2): sign, verify, the delivery id it binds,
and a parser that takes anything."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from hal.printer import job_proof as jp
from hal.printer.job_proof import ProofReason

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
NOW = 1_760_000_000
DOC = hashlib.sha256(b"%PDF-1.7 quarterly report").digest()
JOB = dict(org="acme", user="alice", title="report.pdf", document_sha256=DOC)


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def check(proof, keys=(raw(KEY),), seen=None, now=NOW, **changes):
    return jp.verify(proof, keys, **{**JOB, **changes}, now=now, seen_nonces=set() if seen is None else seen)


def test_a_signed_job_verifies_once_and_its_nonce_is_recorded():
    proof = jp.sign(KEY, **JOB, issued=NOW)
    assert len(proof) <= jp.MAX_LEN and proof.isascii() and proof.startswith("v2.")
    seen: set[str] = set()
    first = check(proof, seen=seen)
    assert first.valid and first.nonce in seen
    assert first.delivery == first.nonce  # a first delivery is named by its own nonce
    again = check(proof, seen=seen)
    assert again.reason is ProofReason.REPLAYED and again.delivery is None


def test_a_redelivery_signs_a_fresh_nonce_and_keeps_the_first_deliverys_id():
    first = check(jp.sign(KEY, **JOB, issued=NOW))
    proof = jp.sign(KEY, **JOB, issued=NOW + 60, delivery=first.delivery)
    seen: set[str] = set()
    again = check(proof, seen=seen, now=NOW + 60)
    assert again.valid and again.delivery == first.delivery and again.nonce != first.nonce
    assert seen == {again.nonce}  # the nonce record holds nonces, not delivery ids
    # the same job delivered a third time: another nonce, the same id, and not a replay
    third = check(jp.sign(KEY, **JOB, issued=NOW + 120, delivery=first.delivery), seen=seen, now=NOW + 120)
    assert third.valid and third.delivery == first.delivery


def test_the_delivery_id_is_signed_changing_it_breaks_the_proof():
    proof = jp.sign(KEY, **JOB, issued=NOW, delivery="ab" * 16)
    head, nonce, issued, delivery, sig = proof.split(".")
    assert delivery == "ab" * 16
    for other in ("cd" * 16, nonce):
        forged = ".".join((head, nonce, issued, other, sig))
        assert check(forged).reason is ProofReason.BAD_SIGNATURE


@pytest.mark.parametrize("delivery", ["", "AB" * 16, "ab" * 15, "ab" * 17, "zz" * 16, 5])
def test_a_delivery_id_is_32_lowercase_hex(delivery):
    with pytest.raises(ValueError):
        jp.sign(KEY, **JOB, issued=NOW, delivery=delivery)


def test_rotation_any_of_the_orgs_keys_verifies():
    proof = jp.sign(KEY, **JOB, issued=NOW)
    assert check(proof, keys=(raw(OTHER), raw(KEY))).valid
    assert check(proof, keys=(KEY.public_key(),)).valid


@pytest.mark.parametrize("change", [
    {"user": "bob"}, {"org": "globex"}, {"title": "other.pdf"},
    {"document_sha256": hashlib.sha256(b"another document").digest()},
])
def test_a_proof_moved_to_another_user_org_title_or_document_fails(change):
    proof = jp.sign(KEY, **JOB, issued=NOW)
    assert check(proof, **change).reason is ProofReason.BAD_SIGNATURE


def test_another_key_fails_and_no_keys_proves_nothing():
    proof = jp.sign(OTHER, **JOB, issued=NOW)
    assert check(proof).reason is ProofReason.BAD_SIGNATURE
    assert check(jp.sign(KEY, **JOB, issued=NOW), keys=()).reason is ProofReason.NO_KEYS


@pytest.mark.parametrize("issued, ok", [
    (NOW - jp.WINDOW_S, True), (NOW + jp.WINDOW_S, True),
    (NOW - jp.WINDOW_S - 1, False), (NOW + jp.WINDOW_S + 1, False), (0, False),
])
def test_the_window_is_fifteen_minutes_either_side(issued, ok):
    result = check(jp.sign(KEY, **JOB, issued=issued))
    assert result.valid is ok
    if not ok:
        assert result.reason is ProofReason.EXPIRED


def test_an_expired_or_bad_proof_does_not_use_up_its_nonce():
    seen: set[str] = set()
    proof = jp.sign(KEY, **JOB, issued=NOW)
    assert check(proof, seen=seen, user="bob").reason is ProofReason.BAD_SIGNATURE
    assert check(proof, seen=seen, now=NOW + 3600).reason is ProofReason.EXPIRED
    assert seen == set() and check(proof, seen=seen).valid


def _v1(proof: str) -> str:
    """The same proof in the old v1 form (no delivery id)."""
    _, nonce, issued, _, sig = proof.split(".")
    return f"v1.{nonce}.{issued}.{sig}"


@pytest.mark.parametrize("proof", [
    None, "", 42, b"v2", "v1" + jp.sign(KEY, **JOB, issued=NOW)[2:], _v1(jp.sign(KEY, **JOB, issued=NOW)),
    jp.sign(KEY, **JOB, issued=NOW) + "=", jp.sign(KEY, **JOB, issued=NOW) + "\n",
    " " + jp.sign(KEY, **JOB, issued=NOW), jp.sign(KEY, **JOB, issued=NOW).upper(),
    "v2." + "0" * 32 + "." + str(NOW) + "." + "0" * 32 + "." + "A" * 85,
    "v2." + "0" * 32 + "." + "1" * 13 + "." + "0" * 32 + "." + "A" * 86,
    "v2." + "0" * 32 + "." + str(NOW) + "." + "A" * 86,  # no delivery id
    "v2." + "0" * 32 + "." + str(NOW) + "." + "0" * 31 + "." + "A" * 86,
    "x" * 10_000,
])
def test_malformed_proofs(proof):
    assert check(proof).reason is ProofReason.MALFORMED


def test_a_second_spelling_of_the_same_signature_is_refused():
    proof = jp.sign(KEY, **JOB, issued=NOW)
    head, sig = proof.rsplit(".", 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(sig[-1])
    twin = f"{head}.{sig[:-1]}{alphabet[last ^ 1]}"  # same bytes when the low bits are ignored
    assert check(twin).reason in (ProofReason.MALFORMED, ProofReason.BAD_SIGNATURE)
    assert not check(twin).valid


def test_fields_with_nul_cannot_be_signed_nor_verified():
    with pytest.raises(ValueError):
        jp.sign(KEY, **{**JOB, "user": "alice\0acme"}, issued=NOW)
    proof = jp.sign(KEY, **JOB, issued=NOW)
    assert check(proof, user="alice\0").reason is ProofReason.BAD_SIGNATURE
    assert check(proof, document_sha256=b"short").reason is ProofReason.BAD_SIGNATURE


def test_the_signed_message_is_domain_separated_and_unambiguous():
    m = jp.signed_message(org="acme", user="al", title="ice", nonce="0" * 32, issued=5, delivery="1" * 32,
                          document_sha256=DOC)
    assert m == (b"tenantprint-job-proof/v2\0acme\0al\0ice\0" + b"0" * 32 + b"\x005\0" + b"1" * 32 + b"\0"
                 + DOC)
    assert m != jp.signed_message(org="acme", user="ali", title="ce", nonce="0" * 32, issued=5,
                                  delivery="1" * 32, document_sha256=DOC)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
                 st.from_regex(r"v2\.[0-9a-f]{32}\.[0-9]{1,12}\.[0-9a-f]{32}\.[A-Za-z0-9_-]{86}",
                               fullmatch=True)))
def test_the_parser_takes_anything_and_never_verifies_a_forgery(text):
    result = check(text)
    assert result.reason in set(ProofReason) and not result.valid


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_mutating_a_real_proof_never_yields_another_valid_one(data):
    proof = jp.sign(KEY, **JOB, issued=NOW)
    i = data.draw(st.integers(0, len(proof) - 1))
    c = data.draw(st.characters(min_codepoint=0, max_codepoint=0x2FF))
    mutated = proof[:i] + c + proof[i + 1:]
    if mutated != proof:
        assert not check(mutated).valid
