"""Exponential back-off with jitter, capped: the wait before a shipper tries a failed request again.

Each failure doubles the base wait up to the cap; the wait is drawn between half and all of it
("equal jitter"), so shippers that failed together (one receiver down for all collectors) do not
retry in step, and none waits less than half its due. A receiver's Retry-After is honoured up to
the cap. Hand-written: a dozen lines, where a retry library would also want to own the loop.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float
    cap: float
    draw: Callable[[], float] = field(default=random.random)  # in [0, 1)

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1 for the first)."""
        base = min(self.cap, self.initial * 2.0 ** min(max(failures - 1, 0), 40))
        wait = base * (0.5 + self.draw() / 2)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.cap))
        return wait
