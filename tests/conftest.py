"""Suite-wide fixtures. The prerequisite rule (skip locally, fail in CI) lives in prereq.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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


VM_TESTS = Path(__file__).parent / "vm"
_twin_build: subprocess.Popen | None = None


def pytest_collection_modifyitems(config, items):
    """`on_demand` tests (minutes each under TCG, e.g. the VM's power cut) run only with
    TP_ON_DEMAND=1 (`make test-vm`); otherwise they are deselected, not skipped."""
    if os.environ.get("TP_ON_DEMAND") == "1":
        return
    kept = [i for i in items if i.get_closest_marker("on_demand") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


def pytest_collection_finish(session):
    """When the run includes tests/vm, their image (the amd64 twin, built by build-image or found
    in its content-keyed cache) starts building at once, niced, beside the tests before them: the
    VM fixture's own build-image call then waits on build-image's lock and finds it cached. The
    build's output: <lab dir>/twin-build.log."""
    global _twin_build
    if session.config.option.collectonly or os.environ.get("TP_TWIN_DIR") or os.geteuid() != 0:
        return
    if not any(VM_TESTS in item.path.parents for item in session.items):
        return
    from lab.services.mfp_vm import BUILD_IMAGE, twin_build_argv

    if not BUILD_IMAGE.exists():
        return
    logs = Path(os.environ.get("TP_LAB_DIR", "/var/tmp/tenantprint-lab"))
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "twin-build.log", "wb") as log:
        _twin_build = subprocess.Popen(["nice", "-n", "10", *twin_build_argv()], stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def pytest_sessionfinish(session):
    """A background twin build still running (the VM tests deselected or the run interrupted)
    is stopped; build-image cleans its work directory up on SIGTERM."""
    if _twin_build is not None and _twin_build.poll() is None:
        _twin_build.terminate()
        try:
            _twin_build.wait(timeout=120)
        except subprocess.TimeoutExpired:
            _twin_build.kill()
