"""Combined mode (the patent's "consecutive" variant), on a lab brought up with `--combined`: one tap
connects and authenticates, and that user's jobs print as they arrive while the session is open;
other users' jobs still wait for their own tap."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lab.poll import wait_for
from prereq import need_binary, need_root

PREFIX = "tpcm"
DOC = "/usr/share/cups/data/default-testpage.pdf"


def cli(*args: str) -> dict:
    env = dict(os.environ, TP_LAB_PREFIX=PREFIX)
    proc = subprocess.run([sys.executable, "-m", "tenantprint", "lab", *args], capture_output=True, text=True,
                          env=env, timeout=300)
    out = json.loads(proc.stdout)
    assert proc.returncode == 0, out
    return out


@pytest.fixture(scope="module")
def combined_lab():
    need_root()
    need_binary("charon-systemd", "cupsd", "pcscd", "freeradius")
    subprocess.run([sys.executable, "-m", "tenantprint", "lab", "down"], env=dict(os.environ, TP_LAB_PREFIX=PREFIX),
                   capture_output=True)
    cli("up", "--combined")
    yield
    assert cli("down")["leftovers"] == {"namespaces": [], "mounts": [], "processes": [], "state_dir": False}


def test_one_tap_connects_authenticates_and_the_users_jobs_print_as_they_arrive(combined_lab):
    st = cli("tap", "--org", "acme", "--user", "alice")
    assert st["state"] == "ready" and st["authenticated_user"] == "alice"
    wait_for(lambda: cli("status")["desks"]["acme"]["queue"], 20, "acme's desk queue")
    before = len(cli("status")["printed"])
    cli("print", "--org", "acme", "--user", "alice", DOC)
    printed = wait_for(lambda: cli("status")["printed"][before:], 20, "alice's document without a second tap")
    assert [p["user"] for p in printed] == ["alice"]
    cli("print", "--org", "acme", "--user", "carol", DOC)
    wait_for(lambda: [j["user"] for j in cli("status")["firmware"]["held_jobs"]] == ["carol"], 20, "carol's job held")
    assert [p["user"] for p in cli("status")["printed"][before:]] == ["alice"]
    cli("tap", "--org", "acme", "--user", "carol")
    wait_for(lambda: [p["user"] for p in cli("status")["printed"][before:]] == ["alice", "carol"], 20,
             "carol's document after her tap")
