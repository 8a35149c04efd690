"""hal/auth: input checks, reply-to-outcome mapping, implementation choice, timing floor."""

from __future__ import annotations

import pytest
from pyrad import packet

from hal.auth import (
    Accepted, AuthConfigError, BadInput, PinRequired, Rejected, Unavailable, check_input,
    open_authenticator,
)
from hal.auth.radius import MIN_TIMEOUT_S, RadiusAuthenticator, dictionary, map_reply
from hal.directory.profile import AuthServerProfile, Secret


def radius_profile(**kw) -> AuthServerProfile:
    base = dict(kind="radius", host="127.0.0.1", port=1812, timeout_s=3.0,
                secret=Secret("TPCANARY-x-radius-1"), retries=2)
    base.update(kw)
    return AuthServerProfile(**base)


def test_only_accept_is_yes():
    assert map_reply("alice", packet.AccessAccept, None, None) == Accepted("alice")
    assert map_reply("dave", packet.AccessReject, "Account disabled", None) == Rejected("dave", "Account disabled")
    assert map_reply("dave", packet.AccessReject, None, None) == Rejected("dave", "Access denied")
    ch = map_reply("bob", packet.AccessChallenge, "Enter PIN", b"\x01" * 16)
    assert isinstance(ch, PinRequired) and ch.challenge == b"\x01" * 16 and ch.prompt == "Enter PIN"
    assert isinstance(map_reply("bob", packet.AccessChallenge, "Enter PIN", None), Unavailable)
    assert isinstance(map_reply("bob", packet.AccessChallenge, None, b""), Unavailable)
    for code in (packet.AccountingResponse, packet.AccessRequest, packet.StatusServer, 0, 255):
        assert isinstance(map_reply("alice", code, None, None), Unavailable)
    assert [o.accepted for o in (Accepted("a"), Rejected("a", "m"), PinRequired("a", b"s", "p"),
                                 Unavailable("r"), BadInput("r"))] == [True, False, False, False, False]


def test_challenge_is_not_in_repr():
    assert "secretstate" not in repr(PinRequired("bob", b"secretstate", "Enter PIN"))


@pytest.mark.parametrize("args, why", [
    (("", "acme", None, None), "user id"),
    (("a b", "acme", None, None), "user id"),
    (("alice@acme", "acme", None, None), "user id"),
    (("x" * 65, "acme", None, None), "user id"),
    ((b"alice", "acme", None, None), "user id"),
    (("alice", "ac/me", None, None), "org id"),
    (("alice", "acme", "12", None), "PIN"),
    (("alice", "acme", "12345678901234567", None), "PIN"),
    (("alice", "acme", "12a4", None), "PIN"),
    (("alice", "acme", "１２３４", None), "PIN"),  # fullwidth digits are not digits we can send
    (("alice", "acme", 1234, None), "PIN"),
    (("alice", "acme", "1234", b""), "challenge"),
    (("alice", "acme", "1234", b"x" * 254), "challenge"),
    (("alice", "acme", "1234", "text"), "challenge"),
])
def test_bad_input(args, why):
    bad = check_input(*args)
    assert isinstance(bad, BadInput) and why in bad.reason
    pin = args[2]
    if isinstance(pin, str) and len(pin) >= 4:
        assert pin not in bad.reason


def test_good_input():
    assert check_input("alice", "acme", None, None) is None
    assert check_input("bob", "acme", "2468", b"\0" * 16) is None
    assert check_input("bob", "acme", Secret("2468"), None) is None


def test_bad_input_never_reaches_the_network():
    # port 9 on an address nothing listens on: a BadInput must come back at once, without sending
    auth = RadiusAuthenticator(radius_profile(host="127.0.0.1", port=9))
    assert isinstance(auth.authenticate("a b", "acme"), BadInput)
    long_fmt = radius_profile(user_format="{user}" + "x" * 250 + "@{org}")
    assert isinstance(RadiusAuthenticator(long_fmt).authenticate("alice", "acme"), BadInput)


def test_open_authenticator_picks_by_kind():
    assert isinstance(open_authenticator(radius_profile()), RadiusAuthenticator)
    with pytest.raises(AuthConfigError):
        open_authenticator(radius_profile(kind="kerberos"))
    with pytest.raises(AuthConfigError):
        open_authenticator(radius_profile(secret=None))
    wiped = radius_profile()
    wiped.secret.wipe()
    with pytest.raises(AuthConfigError):
        open_authenticator(wiped)


def test_purged_secret_is_unavailable_not_an_exception():
    prof = radius_profile()
    auth = open_authenticator(prof)
    prof.secret.wipe()
    out = auth.authenticate("alice", "acme")
    assert isinstance(out, Unavailable) and "purged" in out.reason


def test_timeout_floor_and_deadline():
    short = RadiusAuthenticator(radius_profile(timeout_s=0.2, retries=3))
    assert short.timeout_s == MIN_TIMEOUT_S > 1.0  # above FreeRADIUS's 1 s reject delay
    assert short.deadline_s == pytest.approx(3 * MIN_TIMEOUT_S)
    assert RadiusAuthenticator(radius_profile(timeout_s=3.0, retries=2)).deadline_s == 6.0


def test_shipped_dictionary_parses():
    d = dictionary()
    for name in ("User-Name", "User-Password", "Reply-Message", "State", "NAS-Identifier",
                 "Message-Authenticator", "Proxy-State"):
        assert name in d.attributes
    assert d.attributes["User-Password"].encrypt == 1


def test_only_a_card_ids_accept_names_its_owner():
    card = "card-04c0ffee5a1e01"
    assert map_reply(card, packet.AccessAccept, None, None, "bob") == Accepted(card, "bob")
    assert map_reply(card, packet.AccessAccept, None, None, None) == Accepted(card)  # no owner: refused upstream
    assert map_reply(card, packet.AccessAccept, None, None, "card-0000aaaa") == Accepted(card)
    assert map_reply(card, packet.AccessAccept, None, None, "ACME\\bob") == Accepted(card)
    # a server that echoes User-Name in its own format changes nothing for a badge's user
    assert map_reply("alice", packet.AccessAccept, None, None, "ACME\\alice") == Accepted("alice")
    assert map_reply("alice", packet.AccessAccept, None, None, "bob") == Accepted("alice")
