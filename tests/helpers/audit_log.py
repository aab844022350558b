"""A real audit log for tests: events appended by EventLog, checkpoints signed by Checkpointer with a
key made at run time, at the sizes the test asks for; and small editors for tampering with its lines."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from garrison.audit.checkpoints import Checkpointer
from garrison.audit.log import EventLog
from garrison.audit.paths import AuditPaths
from garrison.audit.segments import list_segments
from garrison.events.schema import Actor, Event


@dataclass
class WrittenLog:
    paths: AuditPaths
    events: list[Event]

    @property
    def directory(self) -> Path:
        return self.paths.log

    def segment(self) -> Path:
        segments = list_segments(self.directory)
        assert len(segments) == 1, "the tamper editors work on a one-segment log"
        return segments[0][1]

    def lines(self) -> list[bytes]:
        return self.segment().read_bytes().splitlines(keepends=True)

    def write_lines(self, lines: list[bytes]) -> None:
        self.segment().write_bytes(b"".join(lines))


def sample_event(number: int) -> Event:
    return Event(
        component="identity",
        type="auth.login",
        outcome="failure" if number % 3 else "success",
        actor=Actor(subject=f"user{number % 7}", ip=f"198.51.100.{number % 250}"),
        details={"n": number, "reason": "bad_password"},
    )


def write_log(state_dir: Path, batches: list[int], checkpoint_after: set[int]) -> WrittenLog:
    """Append batches of ``batches[i]`` events; sign a checkpoint after batch i for i in
    ``checkpoint_after``; and one at close, as the collector does."""
    paths = AuditPaths.for_state_dir(state_dir)
    events: list[Event] = []

    async def main() -> None:
        log = await EventLog.open(paths.log)
        checkpointer = await Checkpointer.open(log, paths.log, paths.checkpoint_key, interval=3600)
        for number, size in enumerate(batches):
            batch = [sample_event(len(events) + i) for i in range(size)]
            await log.append(batch)
            events.extend(batch)
            if number in checkpoint_after:
                assert await checkpointer.checkpoint() is not None
        await checkpointer.checkpoint()
        await log.close()

    asyncio.run(main())
    return WrittenLog(paths, events)
