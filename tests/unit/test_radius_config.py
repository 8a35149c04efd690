"""org/radius_config.py: validation, the generated files, and FreeRADIUS's own check of them."""

from __future__ import annotations

import ipaddress
import stat
import subprocess

import pytest

from prereq import need_binary

from org.radius_config import (
    ATTR_PIN_FAILURES, MSG_DISABLED, MSG_NOT_MEMBER, MSG_PIN_PROMPT, MSG_UNKNOWN, MSG_WRONG_PIN, OrgRadius,
    RadiusConfigError, RadiusUser, client_networks, render, validate, write_config_dir,
)

SECRET = b"TPCANARY-acme-radius-0123456789abcdef"


def cfg(**kw) -> OrgRadius:
    base = dict(org_id="acme", secret=SECRET, clients=("10.20.0.200-10.20.0.239",),
                users=(RadiusUser("alice"), RadiusUser("bob", "pin", "2468"), RadiusUser("dave", "disabled")),
                listen_address="10.20.0.50", port=1812)
    base.update(kw)
    return OrgRadius(**base)


def test_pool_range_is_summarized_exactly():
    nets = client_networks(("10.20.0.200-10.20.0.239",))
    assert [str(n) for n in nets] == ["10.20.0.200/29", "10.20.0.208/28", "10.20.0.224/28"]
    covered = {a for n in nets for a in n}
    assert covered == {ipaddress.IPv4Address(f"10.20.0.{i}") for i in range(200, 240)}
    assert [str(n) for n in client_networks(("10.20.0.1/32",))] == ["10.20.0.1/32"]


@pytest.mark.parametrize("bad, field", [
    (dict(org_id="ac me"), "org_id"),
    (dict(secret=b"short"), "secret"),
    (dict(secret=b"has'quote-in-it"), "secret"),
    (dict(secret=b"has${confdir}-expansion"), "secret"),
    (dict(secret=b"has space in it"), "secret"),
    (dict(clients=()), "clients"),
    (dict(clients=("10.20.0.5/24",)), "clients"),
    (dict(clients=("10.20.0.9-10.20.0.1",)), "clients"),
    (dict(listen_address="10.20.0.500"), "listen_address"),
    (dict(port=0), "port"),
    (dict(users=(RadiusUser("bob", "pin", None),)), "users"),
    (dict(users=(RadiusUser("bob", "pin", '12"34'),)), "users"),
    (dict(users=(RadiusUser("alice", "card", "12a4"),)), "users"),  # a card user's fallback PIN: digits
    (dict(users=(RadiusUser("dave", "disabled", "1234"),)), "users"),
    (dict(users=(RadiusUser("al ice"),)), "users"),
    (dict(users=(RadiusUser("alice"), RadiusUser("alice"))), "users"),
    (dict(users=(RadiusUser("alice", "admin"),)), "users"),
    (dict(pin_max_failures=0), "pin_max_failures"),
    (dict(pin_lockout_s=5), "pin_lockout_s"),
    (dict(pin_lockout_s=86401), "pin_lockout_s"),
])
def test_invalid_descriptions_are_refused_without_secrets(bad, field):
    with pytest.raises(RadiusConfigError) as err:
        validate(cfg(**bad))
    msg = str(err.value)
    assert msg.startswith(field)
    assert SECRET.decode() not in msg and "2468" not in msg and '12"34' not in msg


def test_repr_hides_secret_and_pins():
    text = repr(cfg())
    assert SECRET.decode() not in text and "2468" not in text


def test_rendered_files(tmp_path):
    files = render(cfg(), tmp_path)
    assert set(files) == {"radiusd.conf", "clients.conf", "users", "dictionary", "cards.json"}
    clients = files["clients.conf"]
    assert clients.count("client mfp-pool-") == 3
    assert clients.count(f"secret = '{SECRET.decode()}'") == 3
    assert clients.count("require_message_authenticator = yes") == 3
    users = files["users"]
    assert "alice\tTP-Card-Only := 1\n" in users  # accepted only with a verified card (radius_sun)
    assert 'bob\tCleartext-Password := "2468"' in users
    assert f'dave\tAuth-Type := Reject\n\tReply-Message := "{MSG_DISABLED}"' in users
    assert users.rstrip().endswith(f'DEFAULT\tAuth-Type := Reject\n\tReply-Message := "{MSG_UNKNOWN}"')
    conf = files["radiusd.conf"]
    assert SECRET.decode() not in conf and "2468" not in conf
    assert "ipaddr = 10.20.0.50" in conf and "port = 1812" in conf
    assert "@acme$/" in conf and MSG_NOT_MEMBER in conf
    assert MSG_PIN_PROMPT in conf and MSG_WRONG_PIN in conf and "Access-Challenge" in conf
    assert "reject_delay = 1" in conf and "auth = no" in conf
    assert str(tmp_path) in conf


def test_pin_failure_counter(tmp_path):
    files = render(cfg(pin_max_failures=3, pin_lockout_s=600), tmp_path)
    conf = files["radiusd.conf"]
    assert f"ATTRIBUTE\t{ATTR_PIN_FAILURES}\t3000\tinteger" in files["dictionary"]
    assert "cache pin_failures {" in conf and 'driver = "rlm_cache_rbtree"' in conf
    assert 'key = "%{Stripped-User-Name}"' in conf and "ttl = 600" in conf
    assert f'&control:{ATTR_PIN_FAILURES} := "%{{expr:%{{control:{ATTR_PIN_FAILURES}}} + 1}}"' in conf
    authorize = conf[conf.index("authorize {"):conf.index("authenticate {")]
    # the lock is checked after the challenge and before the PIN (pap) is
    assert authorize.index(MSG_PIN_PROMPT) < authorize.index(f"&control:{ATTR_PIN_FAILURES} >= 3") \
        < authorize.rindex("\t\tpap\n")
    post_auth = conf[conf.index("post-auth {"):]
    reject = post_auth[post_auth.index("Post-Auth-Type REJECT"):]
    assert "&Cache-TTL := -600" in reject and f"&control:{ATTR_PIN_FAILURES} < 3" in reject
    accept = post_auth[:post_auth.index("Post-Auth-Type REJECT")]
    assert "&Cache-TTL := 0" in accept and "&Cache-Read-Only := yes" in accept
    # a locked user's reject carries the wrong-PIN message: no other message is set on that path
    assert conf.count(MSG_WRONG_PIN) == 1


def test_realm_is_escaped_in_the_regex(tmp_path):
    conf = render(cfg(org_id="acme.co"), tmp_path)["radiusd.conf"]
    assert r"@acme\.co$/" in conf


def test_write_config_dir_modes(tmp_path):
    d = write_config_dir(cfg(), tmp_path / "radius")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for f in d.iterdir():
        mode = stat.S_IMODE(f.stat().st_mode)
        assert mode == (0o700 if f.is_dir() else 0o600), f
    assert not list(d.glob(".*.tmp"))


def test_freeradius_accepts_the_generated_config(tmp_path):
    need_binary("/usr/sbin/freeradius")
    d = write_config_dir(cfg(listen_address="*", port=18999), tmp_path / "radius")
    proc = subprocess.run(["/usr/sbin/freeradius", "-C", "-l", "stdout", "-d", str(d)],
                          capture_output=True, timeout=20)
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, out[-2000:]
    assert SECRET.decode() not in out and "2468" not in out
