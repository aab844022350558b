"""What the automated-response tests share: a recording Appender, alerts, configs, async waiting.

The responder runs in the test's own event loop (``asyncio.run``), so waiting for a component to
change is an async poll (``eventually``): a blocking ``time.sleep`` would stop the responder's undo
loop from running in the meantime.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from garrison.audit.pipeline import AlertRaised, LoggedEvent
from garrison.config.assembly import GarrisonConfig, with_derived_defaults
from garrison.events.schema import Actor, Event

T = TypeVar("T")


class Trail:
    """An ``Appender`` that keeps what it is given (in order) and numbers it as a log would."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, events: list[Event]) -> list[LoggedEvent]:
        start = len(self.events)
        self.events.extend(events)
        return [LoggedEvent(start + i, e, e.to_json()) for i, e in enumerate(events)]

    def responses(self, action: str | None = None, result: str | None = None) -> list[Event]:
        return [
            e
            for e in self.events
            if e.type == "audit.response"
            and (action is None or e.details["action"] == action)
            and (result is None or e.details["result"] == result)
        ]

    def only(self, action: str, result: str) -> Event:
        found = self.responses(action, result)
        assert len(found) == 1, [e.to_dict() for e in self.events]
        return found[0]


def alert(
    responses: Sequence[str], rule: str = "test.rule", alert_id: str = "a1", **actor: str
) -> AlertRaised:
    return AlertRaised(alert_id, rule, "high", Actor(**actor), tuple(responses), f"{rule} fired")


def config(state_dir: Path, responses: dict[str, Any], **sections: Any) -> GarrisonConfig:
    """A validated garrison.yaml with ``audit.responses`` and any other sections."""
    body = {"state_dir": str(state_dir), "audit": {"responses": responses}, **sections}
    return with_derived_defaults(GarrisonConfig.model_validate(body))


async def eventually(predicate: Callable[[], T], timeout: float = 20.0, what: str = "") -> T:
    """``predicate``'s first truthy value, polled without blocking the loop; fails after ``timeout``
    (a ceiling for a loaded machine, never the expected time)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate} (last: {value!r})"
        await asyncio.sleep(0.02)


def write_token(path: Path, token: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path
