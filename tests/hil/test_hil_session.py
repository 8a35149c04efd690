"""The session scenario on whatever bench the environment file names (`TP_HIL_ENV`, default the
lab). On a real Pi, a person taps; in CI the lab's virtual card does. Scenarios needing a feature
the bench lacks are skipped with the reason."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hil_bench import BenchError, load
from prereq import need_root

HERE = Path(__file__).parent
ENV = Path(os.environ.get("TP_HIL_ENV", HERE / "envs" / "lab.toml"))


@pytest.fixture(scope="module")
def bench():
    if not ENV.exists():
        pytest.skip(f"no bench: environment file {ENV} not found (see tests/hil/envs/pi.example.toml)")
    if "lab.toml" in ENV.name:
        need_root()
    b = load(ENV)
    yield b
    b.close()


def needs(bench, feature: str) -> None:
    if feature not in bench.features:
        pytest.skip(f"the bench in {ENV.name} has no {feature!r}")


def _wait(pred, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


def test_the_firmware_is_up_and_idle(bench):
    assert bench.status()["state"] in ("idle", "ready")


def test_a_tap_opens_the_session_and_the_tunnel(bench):
    needs(bench, "tunnel")
    st = bench.tap("acme", "alice")
    assert st["state"] == "ready" and st["org"] == "acme"
    assert st["tunnel"]["up"] and st["tunnel"]["virtual_ip"]


def test_the_panel_always_says_something(bench):
    assert bench.status()["panel"]


def test_bench_file_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[bench]\nkind = "lab"\nfeatures = ["teleport"]\n')
    with pytest.raises(BenchError, match="unknown features"):
        load(bad)
