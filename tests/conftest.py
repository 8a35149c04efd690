"""Suite-wide fixtures. The prerequisite rule (skip locally, fail in CI) lives in prereq.py."""

from __future__ import annotations

import os

import pytest

from prereq import IN_CI, need, need_binary, need_root  # noqa: F401  (re-exported)

@pytest.fixture
def require():
    """The `need` function as a fixture, for tests that prefer injection."""
    return need


@pytest.fixture(scope="session")
def lab():
    """The lab's hosts and network (no daemons yet), built once per test session and torn down at
    the end, when nothing of it may remain. Modules start the services they need on it
    (`SomeService().start(lab)`; starts are idempotent). The prefix is `TP_LAB_PREFIX` or `tpt`,
    so a test run never touches a developer's running `tp` lab."""
    need_root()
    need_binary("ip", "nsenter", "unshare")
    from lab.lab import Lab
    from lab.layout import LabLayout

    os.environ.setdefault("TP_LAB_PREFIX", "tpt")
    the_lab = Lab(layout=LabLayout.from_env(), services=[])
    the_lab.down()  # leftovers of an interrupted earlier run
    the_lab.up()
    yield the_lab
    result = the_lab.down()
    assert result["leftovers"] == {"namespaces": [], "mounts": [], "processes": [], "state_dir": False}
