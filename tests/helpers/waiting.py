"""Waiting for something to happen in a test: poll a condition, never sleep a fixed time and hope.

``wait_until(predicate)`` polls with a short interval and returns the predicate's first truthy value; on
timeout it fails the test, saying what it waited for (``what``: a text, or a function called only then
to describe the state at the time) and the predicate's last value. The timeout is a ceiling for a loaded
machine, never the expected duration: a test passes as soon as the condition holds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

POLL_INTERVAL = 0.02


def poll_until(predicate: Callable[[], T], timeout: float, interval: float = POLL_INTERVAL) -> T:
    """The predicate's first truthy value, or its last (falsy) one once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def _describe(predicate: Callable[[], Any]) -> str:
    code = getattr(predicate, "__code__", None)
    name = getattr(predicate, "__qualname__", repr(predicate))
    return f"{name} ({code.co_filename}:{code.co_firstlineno})" if code is not None else name


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = POLL_INTERVAL,
    what: str | Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; fail the test on timeout."""
    value = poll_until(predicate, timeout, interval)
    if not value:
        described = what() if callable(what) else what
        raise AssertionError(
            f"timed out after {timeout} s waiting for {described or _describe(predicate)}"
            f" (last value: {value!r})"
        )
    return value


def read_ready_file(path: Path) -> dict[str, Any] | None:
    """A ready file's JSON once it is complete; None while it is missing or still being written (a
    process may write it in place: existing is not enough)."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


__all__ = ["poll_until", "read_ready_file", "wait_until"]
