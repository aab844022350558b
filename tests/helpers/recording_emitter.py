"""An emitter for tests: keeps every event a component hands over, after checking that it survives the
collector's parser (``Event.from_json``) unchanged, so a test of a component's events is also a test
that the collector would take them."""

from __future__ import annotations

import threading
from typing import Any

from garrison.events.schema import Event


class RecordingEmitter:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lines: list[bytes] = []
        self.started = self.closed = False
        self._lock = threading.Lock()  # the component's loop thread emits, the test thread reads

    def emit(self, event: Event) -> None:
        line = event.to_json()
        assert Event.from_json(line).to_json() == line, line  # the collector reads it back as sent
        with self._lock:
            self.events.append(event)
            self.lines.append(line)

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    def of(self, type: str, **where: Any) -> list[Event]:
        """Events of ``type`` whose actor fields and details match ``where`` (``outcome`` too)."""
        with self._lock:
            events = list(self.events)
        found = []
        for event in events:
            fields = {"outcome": event.outcome, "target": event.target, **event.actor.to_dict()}
            fields.update(event.details)
            if event.type == type and all(fields.get(key) == value for key, value in where.items()):
                found.append(event)
        return found

    def wire(self) -> str:
        """Everything emitted, as the collector would receive it (for canary checks)."""
        with self._lock:
            return b"\n".join(self.lines).decode()

    def clear(self) -> None:
        with self._lock:
            self.events.clear()
            self.lines.clear()
