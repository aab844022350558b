"""Human units in garrison.yaml: sizes (``1MiB``) and durations (``10s``).

Pydantic has no byte-size or duration-string type that accepts ``16KiB`` and ``500ms`` and
exports a useful JSON Schema, so these two small parsers live here.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


def parse_size(value: Any) -> int:
    """``1MiB`` -> 1048576. Integers are bytes. Units: B, KB, MB, GB (10^3) and KiB, MiB, GiB (2^10)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 1MiB or 16KiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size such as 1MiB or 16KiB")
    match = _SIZE_RE.match(value)
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {value!r} (use e.g. 512, 16KiB, 1MiB, 10MB)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(value: Any) -> float:
    """``500ms`` -> 0.5, ``10s`` -> 10.0, ``5m`` -> 300.0, ``7d`` -> 604800.0. Bare numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10s or 500ms")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 10s or 500ms")
    match = _DURATION_RE.match(value)
    if match is None:
        raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 10s, 5m, 1h, 7d)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\d+(\.\d+)?\s*([kKmMgG]i?[bB]|[bB])?$"},
            ],
            "description": "bytes, or a size with a unit: B, KB, MB, GB, KiB, MiB, GiB",
        }
    ),
]
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\d+(\.\d+)?\s*(ms|s|m|h)$"},
            ],
            "description": "seconds, or a duration with a unit: ms, s, m, h",
        }
    ),
]
