"""When to restart a process that died: exponential back-off, reset after a stable run.

The numbers, and why:

- ``initial`` 1 s: the first restart is prompt (a one-off crash costs about a second of outage), yet a
  process that dies at once does not spin the CPU. systemd's ``RestartSec`` defaults to 100 ms and
  supervisord's ``startsecs`` to 1 s; a Python component needs more than 100 ms to start anyway.
- doubling, capped at ``cap`` 30 s: a crash loop (a bad key file, a full disk, a database that is
  down) is retried at most twice a minute forever, with one log line per attempt, instead of being
  given up on (systemd's ``StartLimitBurst`` and supervisord's ``FATAL`` state stop retrying; a
  security plane that stops retrying needs a human to come back, which is what this avoids).
- reset after ``stable_after`` 60 s up: a process that served for a minute and then died is a new
  incident, not the same crash loop, so it gets the prompt 1 s restart again (as systemd's
  ``StartLimitIntervalSec`` forgets old starts).

This is the one restart schedule for every Garrison supervisor (``garrison up`` today, and the
gateway's ``workers: N``); the shared supervisor of issue 8 takes it as it is. One object per
supervised process: it holds that process's history and nothing about sockets or signals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

INITIAL_DELAY = 1.0
BACKOFF_FACTOR = 2.0
MAX_DELAY = 30.0
STABLE_AFTER = 60.0


@dataclass
class RestartPolicy:
    """The back-off of one supervised process. Call :meth:`started` each time it is (re)started and
    :meth:`next_delay` when it has died; the answer is how long to wait before starting it again."""

    initial: float = INITIAL_DELAY
    factor: float = BACKOFF_FACTOR
    cap: float = MAX_DELAY
    stable_after: float = STABLE_AFTER
    clock: Callable[[], float] = time.monotonic  # monotonic: a wall-clock jump must not reset it
    restarts: int = 0  # deaths seen so far (for the logs: a growing count means a crash loop)
    _delay: float = field(init=False, default=0.0)
    _started_at: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.cap or self.factor < 1 or self.stable_after < 0:
            raise ValueError("RestartPolicy needs 0 < initial <= cap, factor >= 1 and stable_after >= 0")
        self._delay = self.initial

    def started(self) -> None:
        self._started_at = self.clock()

    def next_delay(self) -> float:
        """Seconds to wait before the next start of a process that has just died."""
        if self._started_at is not None and self.clock() - self._started_at >= self.stable_after:
            self._delay = self.initial  # it ran long enough: this death starts a new series
        self._started_at = None  # a second death without a start in between does not reset
        delay = self._delay
        self._delay = min(self._delay * self.factor, self.cap)
        self.restarts += 1
        return delay
