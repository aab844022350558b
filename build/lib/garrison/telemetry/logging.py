"""Structured logs: one JSON object per line on standard error.

Events carry a dotted name (``gateway.reload.failed``) and plain fields. Nothing secret is ever
passed here; values are rendered with ``json.dumps`` so hostile text cannot forge a second line.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

_stream: TextIO = sys.stderr
_component = "garrison"


def configure(component: str, stream: TextIO | None = None) -> None:
    global _stream, _component
    _component = component
    if stream is not None:
        _stream = stream


def component() -> str:
    """The component name every line carries (``configure``)."""
    return _component


def log(event: str, level: str = "info", **fields: Any) -> None:
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
        "level": level,
        "component": _component,
        "event": event,
        **fields,
    }
    try:
        _stream.write(json.dumps(record, default=str, separators=(",", ":")) + "\n")
        _stream.flush()
    except (OSError, ValueError):
        pass  # a closed stderr must not take the process down


def write_lines(data: bytes) -> None:
    """Complete JSON lines built elsewhere (a batched access log), onto the same stream as ``log``."""
    try:
        _stream.write(data.decode("utf-8", "replace"))
        _stream.flush()
    except (OSError, ValueError):
        pass


def warn(event: str, **fields: Any) -> None:
    log(event, "warning", **fields)


def error(event: str, **fields: Any) -> None:
    log(event, "error", **fields)
