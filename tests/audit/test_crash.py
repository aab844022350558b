"""`kill -9` of a process appending to the log loses no acknowledged event: after a restart every
event it acknowledged is in the log at its seq, and the log (chain, checkpoints) verifies."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from garrison.audit.checkpoints import Checkpointer, load_public_key
from garrison.audit.log import EventLog
from garrison.audit.paths import AuditPaths
from garrison.audit.verify import verify_log

pytestmark = pytest.mark.process

HELPERS = Path(__file__).parent.parent / "helpers"


def test_no_acknowledged_event_is_lost_across_kill_9(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, str(HELPERS / "audit_appender.py"), str(tmp_path)],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None
    acknowledged: dict[int, str] = {}
    try:
        while len(acknowledged) < 3000:
            line = child.stdout.readline()
            assert line, f"the appender exited early with {child.wait()}"
            seq, event_id = line.decode().split()
            acknowledged[int(seq)] = event_id
        assert child.poll() is None  # killed mid-stream, not after it finished
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    paths = AuditPaths.for_state_dir(tmp_path)

    async def reopen() -> None:
        log = await EventLog.open(paths.log, segment_bytes=64 * 1024)
        assert log.size() >= max(acknowledged) + 1
        entries = {e.seq: e.event.id for e in await log.read(0, log.size())}
        missing = [seq for seq, event_id in acknowledged.items() if entries.get(seq) != event_id]
        assert not missing, f"acknowledged but lost: {missing[:10]}"
        checkpointer = await Checkpointer.open(log, paths.log, paths.checkpoint_key, interval=0.0)
        await log.append([])
        await checkpointer.checkpoint()
        await log.close()

    asyncio.run(reopen())
    report = verify_log(paths.log, load_public_key(paths.checkpoint_public_key))
    assert report.ok, report.problems
    assert report.entries >= len(acknowledged) and report.latest is not None
    assert report.latest.size == report.entries
