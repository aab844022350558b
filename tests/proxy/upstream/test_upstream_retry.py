"""RetryBudget: ratio of recent requests plus a reserve, over a sliding window of seconds."""

from __future__ import annotations

import pytest

from garrison.proxy.upstream.retry import IDEMPOTENT_METHODS, RetryBudget


def spend_all(budget: RetryBudget, now: float, limit: int = 10_000) -> int:
    spent = 0
    while spent < limit and budget.try_spend(now):
        spent += 1
    return spent


def test_reserve_only_without_traffic() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=3.0, window=10.0)
    assert spend_all(budget, 0.0) == 30  # min_per_second * window
    assert not budget.try_spend(0.5)


def test_burst_is_capped_by_ratio() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0.0, window=10.0)
    for _ in range(1000):
        budget.record_request(5.0)
    assert spend_all(budget, 5.0) == 200
    # More traffic earns more retries, at the ratio.
    for _ in range(100):
        budget.record_request(6.0)
    assert spend_all(budget, 6.0) == 20
    assert not budget.try_spend(6.0)


def test_ratio_and_reserve_add_up() -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=1.0, window=4.0)
    for _ in range(10):
        budget.record_request(0.0)
    assert spend_all(budget, 0.0) == 4 + 5


def test_float_ratio_is_not_rounded_down() -> None:
    budget = RetryBudget(ratio=0.29, min_per_second=0.0)
    for _ in range(100):
        budget.record_request(0.0)
    assert spend_all(budget, 0.0) == 29


def test_refills_as_the_window_slides() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=1.0, window=3.0)
    assert spend_all(budget, 10.0) == 3
    assert not budget.try_spend(12.9)  # spent at second 10, still inside [10, 12]
    assert spend_all(budget, 13.0) == 3  # second 10 fell out
    assert spend_all(budget, 14.0) == 0


def test_requests_expire_with_the_window() -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=2.0)
    for _ in range(5):
        budget.record_request(0.0)
    for _ in range(5):
        budget.record_request(1.0)
    assert spend_all(budget, 1.0) == 10
    assert spend_all(budget, 2.0) == 0  # the 5 requests at 1 remain, already spent by the retries at 1
    budget.record_request(3.0)
    assert spend_all(budget, 3.0) == 1  # only the request at 3 is left; the retries at 1 expired


def test_long_gap_clears_everything() -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=10.0)
    for _ in range(100):
        budget.record_request(0.0)
    assert spend_all(budget, 1.0) == 100
    assert spend_all(budget, 1_000_000.0) == 0
    budget.record_request(1_000_000.0)
    assert spend_all(budget, 1_000_000.5) == 1


def test_sustained_traffic_keeps_retries_at_ratio() -> None:
    budget = RetryBudget(ratio=0.1, min_per_second=0.0, window=10.0)
    attempts = retries = 0
    for tick in range(600):  # 60 s at 100 requests/s, every request failing
        now = tick / 10
        for _ in range(10):
            budget.record_request(now)
            attempts += 1
            if budget.try_spend(now):
                retries += 1
    assert retries / attempts == pytest.approx(0.1, abs=0.01)


def test_clock_stepping_back_counts_in_newest_bucket() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=1.0, window=2.0)
    assert spend_all(budget, 10.0) == 2
    assert not budget.try_spend(9.0)
    assert spend_all(budget, 12.0) == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"ratio": -0.1}, {"ratio": float("nan")}, {"min_per_second": -1.0}, {"window": 0.0}, {"window": 1e9}],
)
def test_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryBudget(**kwargs)


def test_idempotent_methods() -> None:
    assert b"GET" in IDEMPOTENT_METHODS and b"DELETE" in IDEMPOTENT_METHODS
    assert b"POST" not in IDEMPOTENT_METHODS and b"PATCH" not in IDEMPOTENT_METHODS
