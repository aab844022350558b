"""CircuitBreaker state machine, driven with explicit `now` values (no sleeping)."""

from __future__ import annotations

import pytest

from garrison.proxy.upstream.circuit import CircuitBreaker, CircuitState


def state(breaker: CircuitBreaker) -> CircuitState:
    """Read the state through a call, so mypy does not narrow it across transitions."""
    return breaker.state


def opened(
    at: float = 100.0, *, failures: int = 3, open_for: float = 10.0, probes: int = 1
) -> tuple[CircuitBreaker, list[CircuitState]]:
    changes: list[CircuitState] = []
    breaker = CircuitBreaker(
        consecutive_failures=failures, open_for=open_for, half_open_probes=probes, on_change=changes.append
    )
    for _ in range(failures):
        breaker.record_failure(at)
    assert breaker.state is CircuitState.OPEN
    return breaker, changes


def test_closed_admits_and_opens_at_threshold() -> None:
    changes: list[CircuitState] = []
    breaker = CircuitBreaker(consecutive_failures=3, on_change=changes.append)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.allow_request(0.0)
    breaker.record_failure(0.0)
    breaker.record_failure(0.0)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.allow_request(0.0)
    breaker.record_failure(1.0)
    assert state(breaker) is CircuitState.OPEN
    assert changes == [CircuitState.OPEN]


def test_success_resets_consecutive_count() -> None:
    breaker = CircuitBreaker(consecutive_failures=3)
    for _ in range(10):
        breaker.record_failure(0.0)
        breaker.record_failure(0.0)
        breaker.record_success(0.0)
    assert breaker.state is CircuitState.CLOSED


def test_open_rejects_until_open_for_elapses() -> None:
    breaker, changes = opened(at=100.0, open_for=10.0)
    assert not breaker.allow_request(100.0)
    assert not breaker.allow_request(109.999)
    assert not breaker.would_allow(109.999)
    assert breaker.state is CircuitState.OPEN
    assert breaker.would_allow(110.0)
    assert breaker.state is CircuitState.OPEN  # would_allow changes nothing
    assert breaker.allow_request(110.0)
    assert state(breaker) is CircuitState.HALF_OPEN
    assert changes == [CircuitState.OPEN, CircuitState.HALF_OPEN]


def test_half_open_admits_only_probe_limit() -> None:
    breaker, _ = opened(probes=2)
    assert breaker.allow_request(110.0)
    assert breaker.allow_request(110.0)
    assert not breaker.would_allow(110.0)
    assert not breaker.allow_request(110.0)
    assert not breaker.allow_request(200.0)  # time alone does not free slots
    breaker.release_probe()
    assert breaker.would_allow(200.0)
    assert breaker.allow_request(200.0)
    assert not breaker.allow_request(200.0)


def test_release_probe_never_goes_negative_or_acts_outside_half_open() -> None:
    breaker, _ = opened(probes=1)
    breaker.release_probe()  # OPEN: ignored
    assert breaker.allow_request(110.0)
    breaker.release_probe()
    breaker.release_probe()
    breaker.release_probe()
    assert breaker.allow_request(110.0)
    assert not breaker.allow_request(110.0)  # still only one slot
    closed = CircuitBreaker()
    closed.release_probe()
    assert closed.state is CircuitState.CLOSED


def test_probe_success_closes() -> None:
    breaker, changes = opened(failures=3)
    assert breaker.allow_request(110.0)
    breaker.record_success(110.5)
    assert breaker.state is CircuitState.CLOSED
    assert changes == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED]
    # A fresh streak is needed to open again.
    breaker.record_failure(111.0)
    breaker.record_failure(111.0)
    assert breaker.state is CircuitState.CLOSED
    breaker.record_failure(111.0)
    assert state(breaker) is CircuitState.OPEN


def test_probe_failure_reopens_from_now() -> None:
    breaker, changes = opened(at=100.0, open_for=10.0)
    assert breaker.allow_request(110.0)
    breaker.record_failure(112.0)
    assert breaker.state is CircuitState.OPEN
    assert not breaker.allow_request(121.9)
    assert breaker.retry_after(112.0) == 10
    assert breaker.allow_request(122.0)
    assert state(breaker) is CircuitState.HALF_OPEN
    assert changes == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.OPEN, CircuitState.HALF_OPEN]


def test_outcomes_while_open_are_ignored() -> None:
    breaker, changes = opened(at=100.0)
    breaker.record_success(101.0)
    breaker.record_failure(105.0)  # a straggler does not extend the open period
    assert breaker.state is CircuitState.OPEN
    assert breaker.allow_request(110.0)
    assert changes == [CircuitState.OPEN, CircuitState.HALF_OPEN]


def test_retry_after() -> None:
    breaker = CircuitBreaker(consecutive_failures=1, open_for=10.0)
    assert breaker.retry_after(0.0) == 1  # closed
    breaker.record_failure(100.0)
    assert breaker.retry_after(100.0) == 10
    assert breaker.retry_after(100.5) == 10
    assert breaker.retry_after(101.0) == 9
    assert breaker.retry_after(109.5) == 1
    assert breaker.retry_after(110.0) == 1
    assert breaker.retry_after(500.0) == 1
    assert breaker.allow_request(110.0)
    assert breaker.retry_after(110.0) == 1  # half-open, slots full


def test_on_change_sees_new_state() -> None:
    seen: list[CircuitState] = []

    def on_change(state: CircuitState) -> None:
        seen.append(breaker.state)
        assert breaker.state is state

    breaker = CircuitBreaker(consecutive_failures=1, open_for=1.0, on_change=on_change)
    breaker.record_failure(0.0)
    breaker.allow_request(1.0)
    breaker.record_success(1.0)
    assert seen == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"consecutive_failures": 0},
        {"open_for": 0.0},
        {"open_for": float("nan")},
        {"half_open_probes": 0},
    ],
)
def test_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]
