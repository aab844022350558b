"""The ready file: how a component tells whoever started it that it serves, and where.

One schema for every component (gateway, identity, and the components to come)::

    {"version": 1, "component": "gateway", "pid": 1234,
     "listeners": {"gateway": "127.0.0.1:8443", "admin": "127.0.0.1:9090"},
     "details": {...}}

``listeners`` maps a listener's name to the address it is bound to (port 0 resolved); ``details`` holds
what a component adds (the identity provider's issuer). The file is written once the component
serves, atomically (a temporary file in the same directory, then ``os.replace``), so a reader sees
the whole file or none. ``read_ready`` turns a missing, partial or foreign file (another version)
into ``None``: "not ready yet", which is what a supervisor polling it needs to know.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["READY_VERSION", "Ready", "read_ready", "write_ready"]

READY_VERSION = 1


@dataclass(frozen=True)
class Ready:
    component: str
    pid: int
    listeners: dict[str, str]
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": READY_VERSION,
                "component": self.component,
                "pid": self.pid,
                "listeners": self.listeners,
                "details": self.details,
            }
        )


def write_ready(path: Path, ready: Ready, mode: int = 0o644) -> None:
    """Write ``ready`` to ``path`` atomically. ``mode`` 0644: the addresses are not secret, and an
    operator's tools may read them; 0600 where a component's details are."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(ready.to_json())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_ready(path: Path) -> Ready | None:
    """The ready file at ``path``, or None while there is none (or none this version understands)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != READY_VERSION:
        return None
    component, pid = data.get("component"), data.get("pid")
    listeners, details = data.get("listeners"), data.get("details", {})
    if not isinstance(component, str) or not isinstance(pid, int) or not isinstance(details, dict):
        return None
    if not isinstance(listeners, dict) or not all(
        isinstance(name, str) and isinstance(address, str) for name, address in listeners.items()
    ):
        return None
    return Ready(component, pid, dict(listeners), dict(details))
