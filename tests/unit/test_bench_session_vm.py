"""bench.session_vm's pure parts: the guest clock's offset from round trips, its summary, the
releases paired with the engine's records, and the ratio report (bench.session's) it writes."""

from __future__ import annotations

import pytest

from bench.session import LOOKUP_BURST, _report, rate_limited
from bench.session_vm import best_offset, clock_summary, release_times


def test_the_offset_comes_from_the_shortest_round_trip():
    # guest 100 s ahead; the long trips' answers were read late in them (skewed), the short one's not
    samples = [(10.0, 110.09, 10.1), (20.0, 120.001, 20.002), (30.0, 130.2, 30.3)]
    offset, err = best_offset(samples)
    assert offset == pytest.approx(100.0, abs=1e-9)
    assert err == pytest.approx(0.001)


def test_a_guest_behind_the_host_has_a_negative_offset():
    offset, err = best_offset([(1000.0, 990.0005, 1000.001)])
    assert offset == pytest.approx(-10.0, abs=1e-9) and err == pytest.approx(0.0005)


def test_no_samples_or_a_backwards_trip_is_refused():
    with pytest.raises(ValueError):
        best_offset([])
    with pytest.raises(ValueError):
        best_offset([(2.0, 5.0, 1.0)])


def test_the_clock_summary_reports_drift_spread_and_the_worst_uncertainty():
    history = [{"offset_s": 0.010, "half_rtt_s": 0.001}, {"offset_s": 0.014, "half_rtt_s": 0.003},
               {"offset_s": 0.012, "half_rtt_s": 0.002}]
    s = clock_summary(history)
    assert s == {"n": 3, "offset_median_ms": 12.0, "drift_ms": 2.0, "spread_ms": 4.0, "uncertainty_max_ms": 3.0}
    assert clock_summary([]) == {"n": 0}


def test_releases_start_on_the_guests_clock_and_end_on_the_hosts():
    # the guest is 5 s ahead: a release started at guest 105.0 is host 100.0; its document at host 100.3
    starts = [{"t_wall": 105.0}, {"t_wall": 115.0}]
    docs = [{"at": 100.3}, {"at": 110.25}, {"at": 999.0}]  # a later record (not ours) is ignored
    assert release_times(starts, docs, offset=5.0) == pytest.approx([0.3, 0.25])
    with pytest.raises(ValueError):
        release_times(starts, docs[:1], offset=5.0)


def test_the_report_gives_each_path_as_a_ratio_to_the_primitives_it_contains():
    paths = {"card_event_to_desk_queue": [3.0, 4.0, 5.0], "card_event_to_document": [2.0]}
    prims = {"lookup": [1.0], "swanctl_initiate": [1.0], "radius": [0.5], "cups_release": [0.5, 0.5]}
    res = _report(0.0, paths, prims)
    assert res["ratios"] == {"card_event_to_desk_queue / (lookup + swanctl_initiate)": 2.0,
                             "card_event_to_document / (radius + cups_release)": 2.0}
    assert res["paths"]["card_event_to_desk_queue"]["median_ms"] == 4000.0
    assert res["primitives"]["cups_release"]["n"] == 2


def test_lookups_go_in_bursts_of_the_devices_limit(monkeypatch):
    waits, bursts = [], []
    monkeypatch.setattr("bench.session.time.sleep", waits.append)
    out = rate_limited(LOOKUP_BURST + 3, lambda k: bursts.append(k) or [0.1] * k)
    assert bursts == [LOOKUP_BURST, 3] and len(out) == LOOKUP_BURST + 3
    assert len(waits) == 2 and all(w > 0 for w in waits)
