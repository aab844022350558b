"""A child process for the crash test: appends batches to an EventLog from several concurrent tasks
(so writes are grouped), checkpoints after commits, and prints `seq id` for every acknowledged event,
flushed after its append returned (durable), until it is killed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from audit_log import sample_event

from garrison.audit.checkpoints import Checkpointer
from garrison.audit.log import EventLog
from garrison.audit.paths import AuditPaths


async def appender(log: EventLog, checkpointer: Checkpointer, task: int) -> None:
    number = 0
    while True:
        batch = [sample_event(task * 1_000_000 + number + i) for i in range(1 + number % 17)]
        number += len(batch)
        logged = await log.append(batch)
        sys.stdout.write("".join(f"{entry.seq} {entry.event.id}\n" for entry in logged))
        sys.stdout.flush()
        await checkpointer.maybe_checkpoint()


async def main(state_dir: Path) -> None:
    paths = AuditPaths.for_state_dir(state_dir)
    log = await EventLog.open(paths.log, segment_bytes=64 * 1024)
    checkpointer = await Checkpointer.open(log, paths.log, paths.checkpoint_key, interval=0.0)
    await asyncio.gather(*(appender(log, checkpointer, task) for task in range(4)))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
