"""Vault's duration parameters (``ttl``, ``delete_version_after``, ``increment``) and its renderings.

Vault takes either a number of seconds or a Go duration string ("90s", "15m", "1h30m", "0s"), and
renders durations back as Go does ("1h30m0s"); times are RFC 3339 with nanoseconds, in UTC.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

__all__ = ["go_duration", "parse_vault_duration", "rfc3339"]

_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_SECONDS = 100 * 365 * 86400.0


def parse_vault_duration(value: Any) -> float:
    """Seconds from an int, a float, a digit string or a Go duration string; None or "" is 0."""
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool):
        raise ValueError("expected a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+", text):
            seconds = float(text)
        else:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"not a duration: {value!r}")
            seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    else:
        raise ValueError("expected a duration")
    if seconds < 0 or seconds > MAX_SECONDS:
        raise ValueError("duration out of range")
    return seconds


def go_duration(seconds: float) -> str:
    """``5400`` -> ``"1h30m0s"`` (Go's time.Duration.String for whole seconds)."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rfc3339(epoch: float) -> str:
    """``2018-03-22T02:24:06.945319214Z``: UTC, nanoseconds, as Vault writes times."""
    whole = int(epoch)
    moment = dt.datetime.fromtimestamp(whole, dt.UTC)
    nanos = min(999_999_999, round((epoch - whole) * 1e9))
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"
