"""The restart back-off schedule, driven by a fake clock: no processes, no waiting."""

from __future__ import annotations

import pytest

from garrison.core.restart import RestartPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def crash_loop(policy: RestartPolicy, clock: FakeClock, deaths: int, up_for: float = 0.5) -> list[float]:
    """Start, run ``up_for`` seconds, die, wait the delay given; ``deaths`` times."""
    delays = []
    for _ in range(deaths):
        policy.started()
        clock.now += up_for
        delay = policy.next_delay()
        delays.append(delay)
        clock.now += delay
    return delays


def test_delays_start_at_one_second_double_and_stay_at_the_cap() -> None:
    clock = FakeClock()
    policy = RestartPolicy(clock=clock)
    assert crash_loop(policy, clock, 8) == [1, 2, 4, 8, 16, 30, 30, 30]
    assert policy.restarts == 8


def test_a_stable_run_resets_the_back_off() -> None:
    clock = FakeClock()
    policy = RestartPolicy(clock=clock)
    assert crash_loop(policy, clock, 4) == [1, 2, 4, 8]
    policy.started()
    clock.now += 60  # exactly the stable period: a new incident
    assert policy.next_delay() == 1
    assert crash_loop(policy, clock, 2) == [2, 4]


def test_a_run_just_short_of_the_stable_period_keeps_backing_off() -> None:
    clock = FakeClock()
    policy = RestartPolicy(clock=clock)
    assert crash_loop(policy, clock, 3) == [1, 2, 4]
    assert crash_loop(policy, clock, 1, up_for=59.9) == [8]


def test_time_spent_waiting_to_restart_does_not_count_as_a_stable_run() -> None:
    """Only time since the last start counts: a long back-off wait is not an uptime."""
    clock = FakeClock()
    policy = RestartPolicy(clock=clock, cap=120, stable_after=60)
    assert crash_loop(policy, clock, 8) == [1, 2, 4, 8, 16, 32, 64, 120]
    # Died again without a start being recorded (e.g. it failed before it was ready): no reset.
    clock.now += 500
    assert policy.next_delay() == 120


def test_custom_schedule() -> None:
    clock = FakeClock()
    policy = RestartPolicy(initial=0.5, factor=3, cap=10, stable_after=5, clock=clock)
    assert crash_loop(policy, clock, 4) == [0.5, 1.5, 4.5, 10]
    assert crash_loop(policy, clock, 1, up_for=5) == [0.5]


@pytest.mark.parametrize(
    "kwargs", [{"initial": 0}, {"initial": 40, "cap": 30}, {"factor": 0.5}, {"stable_after": -1}]
)
def test_nonsense_schedules_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="RestartPolicy needs"):
        RestartPolicy(**kwargs)  # type: ignore[arg-type]
