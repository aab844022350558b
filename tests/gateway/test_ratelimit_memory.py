"""The in-process counters decide exactly as ``limits``' MemoryStorage, and stay bounded.

Both run side by side on one virtual clock: the counters take ``now`` as an argument, and
``limits`` reads ``time.time()``, which the test points at the same clock (its module's ``time``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from limits.storage import MemoryStorage

from garrison.gateway.ratelimit_memory import MemoryCounters

START = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    clock = Clock()
    # limits.storage.memory does `import time` and calls time.time(): give it a module whose time() is ours.
    import limits.storage.memory as memory_module

    class FakeTime:
        time = staticmethod(clock.time)

    monkeypatch.setattr(memory_module, "time", FakeTime)
    yield clock


def _steps(seed: int, expiry: int, count: int) -> Iterator[tuple[float, str]]:
    """Hits at random moments (bursts, pauses of up to three windows) on three keys."""
    rng = random.Random(seed)
    for _ in range(count):
        pause = rng.choice((0.0, 0.0, 0.001, expiry * rng.random() / 7, expiry * rng.random() * 3))
        yield pause, rng.choice("abc")


CASES = [(limit, expiry, seed) for limit, expiry in ((1, 1), (3, 2), (5, 60), (10, 7)) for seed in range(3)]


@pytest.mark.parametrize(("limit", "expiry", "seed"), CASES)
def test_fixed_window_matches_limits(clock: Clock, limit: int, expiry: int, seed: int) -> None:
    reference, counters = MemoryStorage(), MemoryCounters(limit, expiry)
    for pause, key in _steps(seed, expiry, 400):
        clock.now += pause
        count, ends = counters.hit_fixed(key, clock.now)
        assert count == reference.incr(key, expiry)
        assert ends == pytest.approx(reference.get_expiry(key))
        assert (count <= limit) == (reference.get(key) <= limit)


@pytest.mark.parametrize(("limit", "expiry", "seed"), CASES)
def test_moving_window_matches_limits(clock: Clock, limit: int, expiry: int, seed: int) -> None:
    reference, counters = MemoryStorage(), MemoryCounters(limit, expiry)
    for pause, key in _steps(seed, expiry, 400):
        clock.now += pause
        allowed = counters.acquire_moving(key, clock.now)
        assert allowed == reference.acquire_entry(key, limit, expiry)
        start, count = counters.moving_window(key, clock.now)
        expected_start, expected_count = reference.get_moving_window(key, limit, expiry)
        assert count == expected_count
        if count:  # with an empty window limits names an old entry's time; ours says "now"
            assert start == pytest.approx(expected_start)


@pytest.mark.parametrize(("limit", "expiry", "seed"), CASES)
def test_sliding_window_counter_matches_limits(clock: Clock, limit: int, expiry: int, seed: int) -> None:
    reference, counters = MemoryStorage(), MemoryCounters(limit, expiry)
    for pause, key in _steps(seed, expiry, 400):
        clock.now += pause
        allowed = counters.acquire_sliding(key, clock.now)
        assert allowed == reference.acquire_sliding_window_entry(key, limit, expiry, 1)
        assert counters.sliding_window(key, clock.now) == pytest.approx(
            reference.get_sliding_window(key, expiry)
        )


def test_a_full_table_evicts_the_oldest_key() -> None:
    counters = MemoryCounters(limit=1, expiry=60, max_keys=3)
    for key in "abc":
        counters.hit_fixed(key, START)
    assert counters.hit_fixed("a", START)[0] == 2  # still counted: the table is not over its cap
    counters.hit_fixed("d", START + 1)  # a fourth key: "a", whose window began first, goes
    assert len(counters) == 3
    assert counters.hit_fixed("a", START + 2)[0] == 1
    assert "b" not in counters.keys  # and then "b", to make room for "a" again


def test_a_full_table_drops_expired_keys_before_live_ones() -> None:
    counters = MemoryCounters(limit=5, expiry=10, max_keys=2)
    counters.acquire_moving("old", START)
    counters.acquire_moving("live", START + 9)
    counters.acquire_moving("new", START + 12)  # "old" has left its window, "live" has not
    assert set(counters.keys) == {"live", "new"}


@pytest.mark.parametrize("strategy", ["fixed", "moving", "sliding"])
def test_sweep_drops_finished_windows_a_bounded_number_at_a_time(strategy: str) -> None:
    counters = MemoryCounters(limit=2, expiry=10)
    hit = {
        "fixed": counters.hit_fixed,
        "moving": counters.acquire_moving,
        "sliding": counters.acquire_sliding,
    }[strategy]
    for number in range(50):
        hit(f"k{number}", START)
    hit("live", START + 25)
    counters.sweep(START + 25, budget=20)
    assert len(counters) == 31  # twenty looked at, all over
    counters.sweep(START + 25, budget=1000)
    assert list(counters.keys) == ["live"]
