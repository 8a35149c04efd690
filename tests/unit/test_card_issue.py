"""org/card_issue + `tenantprint org card`: a user's NTAG 424 DNA card into the org's secrets, the
badge it carries and where the card mirrors its SUN message; onboarding attaches the card."""

import json
import stat

import pytest

from hal.card.badge import decode_badge, ndef_file
from org import card_issue, card_sun, cli, onboarding

ORG = {
    "org_id": "acme",
    "gateway": {"id": "gw.acme", "wan_address": "203.0.113.10", "lan": "10.20.0.0/24",
                "pool": "10.20.0.200-10.20.0.239", "devices": ["mfp-1.space-1"]},
    "radius": {"host": "10.20.0.50", "users": [{"id": "alice", "kind": "card", "pin": "1357"},
                                               {"id": "bob", "kind": "pin", "pin": "2468"},
                                               {"id": "dave", "kind": "disabled"}]},
}
SECRETS = {"psk": "TPCANARY-psk-0123456789abcdef", "radius": "TPCANARYradius0123456789"}
UID = "04a1b2c3d4e5f6"
OTHER_UID = "04:11:22:33:44:55:66"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "org.json").write_text(json.dumps(ORG))
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps(SECRETS))
    secrets.chmod(0o600)
    return tmp_path / "org.json", secrets


def _secrets(path):
    return json.loads(path.read_text())


def _users(org_file, secrets_file):
    return {u.user_id: u for u in onboarding.radius(*onboarding.load(org_file, secrets_file)).users}


def test_issue_writes_the_card_into_the_secrets_file_privately_keeping_the_rest(files):
    org_file, secrets_file = files
    secrets_file.chmod(0o644)
    card = card_issue.issue(org_file, secrets_file, "alice", UID)
    s = _secrets(secrets_file)
    assert {k: s[k] for k in SECRETS} == SECRETS
    assert s["cards"] == {"alice": card.to_json()} and card.uid == bytes.fromhex(UID)
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in secrets_file.parent.iterdir()) == ["org.json", "secrets.json"]


def test_onboarding_attaches_the_card_and_the_fallback_pin(files):
    card = card_issue.issue(*files, "alice", UID)
    users = _users(*files)
    assert users["alice"].card == card and users["alice"].pin == "1357" and users["bob"].card is None
    # the server's own check takes what the card mirrors with those keys
    m = card_sun.message(card.uid, 1, card.k_meta_read, card.k_file_read)
    assert card_sun.check(m, card.k_meta_read, card.k_file_read, card.uid, None).counter == 1
    # and the generated config carries it
    rad = onboarding.write_radius_config(*onboarding.load(*files), files[0].parent / "rad")
    assert json.loads((rad / "cards.json").read_text()) == {"alice": card.to_json()}


def test_a_pin_user_may_hold_a_card_too(files):
    card_issue.issue(*files, "bob", UID)
    assert _users(*files)["bob"].card.uid == bytes.fromhex(UID)


def test_one_card_is_never_issued_to_two_users(files):
    card_issue.issue(*files, "alice", UID)
    before = files[1].read_text()
    with pytest.raises(card_issue.UidTaken, match="alice") as err:
        card_issue.issue(*files, "bob", UID.upper())
    assert UID not in str(err.value).lower() and files[1].read_text() == before


@pytest.mark.parametrize("user, error", [("mallory", card_issue.UnknownUser),
                                         ("dave", card_issue.NotIssuable),
                                         ("../x", card_issue.UnknownUser)])
def test_unknown_and_disabled_users_get_no_card(files, user, error):
    with pytest.raises(error):
        card_issue.issue(*files, user, UID)
    assert "cards" not in _secrets(files[1])


@pytest.mark.parametrize("uid", ["04a1b2c3d4e5", "04a1b2c3d4e5f6a7", "zz" * 7, "", "04 a1 b2 c3 d4 e5 f6"])
def test_a_uid_is_seven_bytes_of_hex(files, uid):
    with pytest.raises(card_issue.BadUid):
        card_issue.issue(*files, "alice", uid)


def test_reissue_replaces_the_card_and_its_keys(files):
    old = card_issue.issue(*files, "alice", UID)
    new = card_issue.issue(*files, "alice", OTHER_UID)
    assert _users(*files)["alice"].card == new and new.uid == bytes.fromhex("04112233445566")
    assert old.k_meta_read.hex() not in files[1].read_text() and old.k_file_read.hex() not in files[1].read_text()
    # the same card again, say after its keys were lost: new keys, the old card's messages fail
    again = card_issue.issue(*files, "alice", OTHER_UID)
    m = card_sun.message(new.uid, 5, new.k_meta_read, new.k_file_read)
    with pytest.raises(card_sun.SunError):
        card_sun.check(m, again.k_meta_read, again.k_file_read, again.uid, None)


def test_revoke_removes_the_card_and_only_it(files):
    card_issue.issue(*files, "alice", UID)
    card_issue.issue(*files, "bob", OTHER_UID)
    card_issue.revoke(*files, "alice")
    assert set(_secrets(files[1])["cards"]) == {"bob"} and _users(*files)["alice"].card is None
    card_issue.revoke(*files, "bob")
    assert _secrets(files[1]) == SECRETS
    with pytest.raises(card_issue.NoCardIssued):
        card_issue.revoke(*files, "bob")
    # the card is free again
    card_issue.issue(*files, "bob", UID)


def test_a_user_who_left_is_revoked_even_though_onboarding_refuses_the_card_now(files):
    org_file, secrets_file = files
    card_issue.issue(org_file, secrets_file, "alice", UID)
    org = json.loads(json.dumps(ORG))
    org["radius"]["users"] = org["radius"]["users"][1:]
    org_file.write_text(json.dumps(org))
    with pytest.raises(onboarding.OnboardingError, match="alice") as err:
        onboarding.radius(*onboarding.load(*files))
    assert "TPCANARY" not in str(err.value)
    card_issue.revoke(*files, "alice")
    assert _users(*files).keys() == {"bob", "dave"}


@pytest.mark.parametrize("cards, match", [
    ({"dave": {"uid": UID, "k_meta": "00" * 16, "k_file": "11" * 16}}, "dave"),
    ({"alice": {"uid": UID, "k_meta": "TPCANARY", "k_file": "11" * 16}}, "alice"),
    ({"alice": {"uid": UID, "k_meta": "00" * 16}}, "alice"),
    ([], "cards"),
])
def test_onboarding_refuses_bad_cards_naming_the_user_not_the_key(files, cards, match):
    files[1].write_text(json.dumps({**SECRETS, "cards": cards}))
    with pytest.raises(onboarding.OnboardingError, match=match) as err:
        onboarding.radius(*onboarding.load(*files))
    assert "TPCANARY" not in str(err.value) and "0000" not in str(err.value)


def test_unknown_secrets_keys_are_still_refused(files):
    files[1].write_text(json.dumps({**SECRETS, "card": {}}))
    with pytest.raises(onboarding.OnboardingError, match="unknown"):
        onboarding.load(*files)


@pytest.mark.parametrize("user, org", [("alice", "acme"), ("a" * 64, "o" * 64), ("x", "y")])
def test_the_offsets_point_at_the_placeholders_in_the_ndef_file(user, org):
    message = card_issue.badge_template(user, org)
    assert decode_badge(message).proof == "0" * 48
    image = ndef_file(message)
    e, c = card_issue.mirror_offsets(user, org)
    assert image[e:e + 32] == b"0" * 32 and image[c:c + 16] == b"0" * 16
    assert image[e - 5:e] == b'"e":"' and image[c - 5:c] == b'"c":"' and image[c + 16:c + 17] == b'"'
    assert len(image) <= card_issue.NTAG424_NDEF_FILE_SIZE
    # what the card makes of it on a read: the same bytes with its SUN message there, a badge that parses
    card = card_sun.Card.new(bytes.fromhex(UID))
    m = card_sun.message(card.uid, 7, card.k_meta_read, card.k_file_read)
    read = bytearray(image)
    read[e:e + 32], read[c:c + 16] = m.enc_picc_data.encode(), m.mac.encode()
    badge = decode_badge(bytes(read[2:]))
    assert (badge.user_id, badge.org_id) == (user, org)
    assert card_sun.check(card_sun.SunMessage(badge.proof[:32], badge.proof[32:]), card.k_meta_read,
                          card.k_file_read, card.uid, 6).counter == 7


def test_cli_issue_prints_what_to_write_and_keeps_the_keys_off_stdout(files, tmp_path, capsys):
    org_file, secrets_file = files
    keys = tmp_path / "keys.json"
    rc = cli.main(["card", "issue", "--org", str(org_file), "--secrets", str(secrets_file), "--user", "alice",
                   "--uid", UID, "--keys-out", str(keys)])
    out, err = capsys.readouterr()
    assert rc == 0 and err == ""
    line = json.loads(out)
    card = _users(*files)["alice"].card
    assert json.loads(keys.read_text()) == {"k_meta": card.k_meta_read.hex(), "k_file": card.k_file_read.hex()}
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert card.k_meta_read.hex() not in out and card.k_file_read.hex() not in out
    assert line["user"] == "alice" and line["org"] == "acme" and line["uid"] == UID and line["written"] is False
    assert bytes.fromhex(line["badge_ndef_hex"]) == card_issue.badge_template("alice", "acme")
    assert (line["picc_data_offset"], line["sdm_mac_offset"]) == card_issue.mirror_offsets("alice", "acme")
    assert "radius-config" in line["next"] and str(keys) in line["next"]


def test_cli_errors_are_one_line_without_a_key_and_leave_no_keys_file(files, tmp_path, capsys):
    org_file, secrets_file = files
    card_issue.issue(org_file, secrets_file, "alice", UID)
    secret_text = secrets_file.read_text()
    keys = tmp_path / "keys.json"
    rc = cli.main(["card", "issue", "--org", str(org_file), "--secrets", str(secrets_file), "--user", "bob",
                   "--uid", UID, "--keys-out", str(keys)])
    out, err = capsys.readouterr()
    assert rc == 1 and out == "" and err.count("\n") == 1 and "UidTaken" in err
    assert not keys.exists() and secrets_file.read_text() == secret_text
    for key in _secrets(secrets_file)["cards"]["alice"].values():
        assert key not in err.lower()
    # an existing keys file is never overwritten, and nothing is issued then
    keys.write_text("keep")
    rc = cli.main(["card", "issue", "--org", str(org_file), "--secrets", str(secrets_file), "--user", "alice",
                   "--uid", OTHER_UID, "--keys-out", str(keys)])
    assert rc == 1 and keys.read_text() == "keep" and secrets_file.read_text() == secret_text
    capsys.readouterr()


def test_cli_revoke(files, capsys):
    card_issue.issue(*files, "alice", UID)
    args = ["card", "revoke", "--org", str(files[0]), "--secrets", str(files[1]), "--user", "alice"]
    assert cli.main(args) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["revoked"] is True and line["user"] == "alice" and "radius-config" in line["next"]
    assert cli.main(args) == 1
    assert "no card issued" in capsys.readouterr().err
