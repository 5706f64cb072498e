"""bench/drain_wave.py's arithmetic: buckets, the wave's figures, pairing closes and opens.

The benchmark itself runs no test (it measures timing on a real machine); this checks
only that what it reports is computed as bench/README.md says.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def wave() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # drain_wave imports rollout beside it
    try:
        spec = importlib.util.spec_from_file_location("drain_wave", BENCH / "drain_wave.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_buckets_keep_the_empty_ones_between_first_and_last(wave: ModuleType) -> None:
    assert wave.bucket_series([0.05, 0.06, 0.35]) == (0, [2, 0, 0, 1])
    assert wave.bucket_series([1.23, 1.21]) == (12, [2])
    assert wave.bucket_series([]) == (0, [])


def test_wave_stats_mean_is_over_the_wave_not_the_spread(wave: ModuleType) -> None:
    # 6 reconnects over buckets 0..2: mean 2, the fullest holds 4.
    stats = wave.wave_stats([0.01, 0.02, 0.03, 0.04, 0.15, 0.29])
    assert stats["mean_per_bucket"] == 2
    assert stats["max_per_bucket"] == 4
    assert stats["max_over_mean"] == 2
    assert stats["wave_s"] == pytest.approx(0.28)


def test_analyse_pairs_each_drain_close_with_the_next_open(wave: ModuleType) -> None:
    t0 = 100.0
    # [client, attempt, open, close, code, hint]
    sockets = [
        [0, 90.0, 90.1, 100.5, 1012, 300],   # drained at +0.5 s, hint 300 ms
        [0, 100.5, None, 100.6, 1006, None],  # a failed attempt, retried
        [0, 100.8, 100.81, 130.0, 1000, None],  # reconnected at +0.81 s; our own close
        [1, 90.0, 90.1, 101.0, 1012, None],
        [1, 101.01, 101.02, 130.0, 1000, None],
    ]
    report = {"sockets": sockets, "lib": {"reconnecting": 1}, "loop_delay_ms": {"max": 1.0,
                                                                               "p99": 1.0}}
    out = wave.analyse(t0, 10.0, [report], 1012)
    assert out["drained"] == 2
    assert out["reconnects"] == 2
    assert out["failed_attempts"] == 1
    assert out["failed_codes"] == {"1006": 1}
    assert out["first_s"] == pytest.approx(0.81)
    assert out["last_s"] == pytest.approx(1.02)
    assert out["hints_seen"] == 1
    # Client 0 waited 310 ms from its close, 10 ms beyond its hint.
    assert out["close_to_open_minus_hint_ms_p50"] == pytest.approx(10.0)


def test_model_tells_an_even_schedule_from_random_waits(wave: ModuleType) -> None:
    assert wave.model("immediate", 2000, 10.0, trials=5) < 1.1
    assert wave.model("js", 2000, 10.0, trials=5) > 1.4
    assert wave.model("js", 2000, 0.0) is None


def test_ratio_shows_the_side_of_the_criterion(wave: ModuleType) -> None:
    assert wave._ratio(1.5046) == "1.505"
    assert wave._ratio(1.4951) == "1.50"
    assert wave._ratio(1.73) == "1.73"
