"""Checkpointer: the key made once (0600, public key beside it), checkpoints on the interval while
entries arrive (injected clock), the signed text, durability, and refusing a log shorter than them."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest
from audit_log import sample_event, write_log

from garrison.audit.checkpoints import (
    Checkpointer,
    CheckpointError,
    load_or_create_key,
    load_public_key,
    read_checkpoints,
)
from garrison.audit.log import EventLog
from garrison.audit.paths import CHECKPOINTS_FILE, AuditPaths


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_key_is_made_once_private_with_its_public_key(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "checkpoint.key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path).public_key() == key.public_key()
    assert load_public_key(path.with_suffix(".pub")) == key.public_key()
    path.chmod(0o644)
    with pytest.raises(CheckpointError, match="chmod 600"):
        load_or_create_key(path)


def test_checkpoints_follow_the_interval_while_entries_arrive(tmp_path: Path) -> None:
    paths = AuditPaths.for_state_dir(tmp_path)
    clock = Clock()

    async def main() -> None:
        log = await EventLog.open(paths.log)
        checkpointer = await Checkpointer.open(log, paths.log, paths.checkpoint_key, 10, clock)
        assert await checkpointer.maybe_checkpoint() is None  # nothing logged
        await log.append([sample_event(0)])
        assert await checkpointer.maybe_checkpoint() is None  # interval not over
        clock.now += 10
        made = await checkpointer.maybe_checkpoint()
        assert made is not None and made.size == 1 and made.root == log.head().root
        clock.now += 60
        assert await checkpointer.maybe_checkpoint() is None  # nothing new: no checkpoint
        await log.append([sample_event(1), sample_event(2)])
        assert await checkpointer.maybe_checkpoint() is not None
        await log.append([sample_event(3)])
        closing = await checkpointer.checkpoint()  # at close, whatever the interval
        assert closing is not None and closing.size == 4 and checkpointer.count == 3
        assert await checkpointer.checkpoint() is None
        await log.close()

    asyncio.run(main())
    stored = read_checkpoints(paths.log / CHECKPOINTS_FILE)
    assert [c.size for c in stored] == [1, 3, 4]
    key = load_public_key(paths.checkpoint_public_key)
    for checkpoint in stored:
        checkpoint.verify(key)
    text = stored[-1].signed_text().decode().splitlines()
    assert text[0] == "garrison.audit.checkpoint/v1" and text[1] == "size 4"
    assert text[2] == f"root {stored[-1].root.hex()}" and text[4].startswith("time 2027-01-15T")


def test_a_torn_checkpoint_line_is_cut_at_start(tmp_path: Path) -> None:
    written = write_log(tmp_path, [5], set())
    path = written.directory / CHECKPOINTS_FILE
    path.write_bytes(path.read_bytes() + b'{"size":9,"ro')

    async def main() -> None:
        log = await EventLog.open(written.directory)
        checkpointer = await Checkpointer.open(log, written.directory, written.paths.checkpoint_key, 10)
        assert checkpointer.latest is not None and checkpointer.latest.size == 5
        await log.close()

    asyncio.run(main())
    assert path.read_bytes().endswith(b"}\n")


def test_a_log_shorter_than_its_checkpoint_refuses_to_start(tmp_path: Path) -> None:
    written = write_log(tmp_path, [5, 5], {0})
    written.write_lines(written.lines()[:7])

    async def main() -> None:
        log = await EventLog.open(written.directory)
        try:
            with pytest.raises(CheckpointError, match="holds 7 entries but a signed checkpoint covers 10"):
                await Checkpointer.open(log, written.directory, written.paths.checkpoint_key, 10)
        finally:
            await log.close()

    asyncio.run(main())
