"""EventLog: durable appends with group commit, the chain and tree head, reads through the sparse
index across segments, and crash recovery (torn tail cut; damage elsewhere refuses to open)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from garrison.audit.log import EventLog, LogClosed, LogDamaged
from garrison.audit.merkle import leaf_hash, mth
from garrison.audit.segments import CHAIN_GENESIS, chain_next, list_segments
from garrison.events.schema import Actor, Event

T = TypeVar("T")


def run(factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await factory()

    return asyncio.run(main())


def event(number: int) -> Event:
    return Event(
        component="gateway",
        type="http.request",
        actor=Actor(ip="192.0.2.7"),
        target=f"/api/{number}",
        details={"n": number, "text": 'é\n"quoted"'},
    )


def test_appends_are_numbered_chained_and_hashed(tmp_path: Path) -> None:
    async def main() -> None:
        log = await EventLog.open(tmp_path)
        first = await log.append([event(0), event(1)])
        second = await log.append([event(2)])
        assert [e.seq for e in first + second] == [0, 1, 2]
        assert first[0].line == first[0].event.to_json()
        head = log.head()
        lines = [e.line for e in first + second]
        assert head.size == log.size() == 3
        assert head.root == mth(lines)
        chain = CHAIN_GENESIS
        for line in lines:
            chain = chain_next(chain, leaf_hash(line))
        assert head.chain == chain
        await log.close()
        with pytest.raises(LogClosed):
            await log.append([event(3)])
        reopened = await EventLog.open(tmp_path)
        assert reopened.head() == head
        read = await reopened.read(0, 10)
        assert [e.line for e in read] == lines
        assert read[2].event.id == second[0].event.id
        await reopened.close()

    run(main)


def test_concurrent_appends_share_writes_and_keep_each_batch_together(tmp_path: Path) -> None:
    async def main() -> None:
        log = await EventLog.open(tmp_path)
        batches = [[event(i * 10 + j) for j in range(5)] for i in range(20)]
        results = await asyncio.gather(*(log.append(b) for b in batches))
        for batch, logged in zip(batches, results, strict=True):
            seqs = [e.seq for e in logged]
            assert seqs == list(range(seqs[0], seqs[0] + 5))
            assert [e.event.id for e in logged] == [e.id for e in batch]
        assert sorted(e.seq for r in results for e in r) == list(range(100))
        await log.close()

    run(main)


def test_reads_seek_through_the_index_across_segments(tmp_path: Path) -> None:
    async def main() -> None:
        log = await EventLog.open(tmp_path, segment_bytes=4096, index_every=7)
        written = []
        for i in range(30):
            written += await log.append([event(i * 3 + j) for j in range(3)])
        assert len(list_segments(tmp_path)) > 3
        for start, limit in [(0, 5), (6, 1), (7, 20), (41, 100), (89, 5), (90, 5), (-1, 3), (5, 0)]:
            got = await log.read(start, limit)
            want = written[start : start + limit] if start >= 0 else []
            assert [e.line for e in got] == [e.line for e in want], (start, limit)
        await log.close()
        reopened = await EventLog.open(tmp_path, segment_bytes=4096, index_every=7)
        assert [e.seq for e in await reopened.read(50, 30)] == list(range(50, 80))
        assert reopened.head().root == mth([e.line for e in written])
        await reopened.append([event(1000)])
        assert [e.seq for e in await reopened.read(89, 5)] == [89, 90]
        await reopened.close()

    run(main)


def _segment(tmp_path: Path) -> Path:
    return list_segments(tmp_path)[-1][1]


def _fill(tmp_path: Path, count: int) -> list[bytes]:
    async def main() -> list[bytes]:
        log = await EventLog.open(tmp_path)
        logged = await log.append([event(i) for i in range(count)])
        await log.close()
        return [e.line for e in logged]

    return run(main)


@pytest.mark.parametrize("tail", [b'{"seq":5,"chain":"ab', b"\x00" * 300, b"\x00" * 40 + b"\n" + b"\x00" * 9])
def test_a_torn_last_line_is_cut_off_on_open(tmp_path: Path, tail: bytes) -> None:
    lines = _fill(tmp_path, 5)
    path = _segment(tmp_path)
    good = path.stat().st_size
    with path.open("ab") as file:
        file.write(tail)

    async def main() -> None:
        log = await EventLog.open(tmp_path)
        assert log.size() == 5
        assert path.stat().st_size == good
        more = await log.append([event(5)])
        assert more[0].seq == 5
        assert log.head().root == mth([*lines, more[0].line])
        await log.close()

    run(main)


def test_a_damaged_line_before_the_end_refuses_to_open(tmp_path: Path) -> None:
    _fill(tmp_path, 5)
    path = _segment(tmp_path)
    data = path.read_bytes().split(b"\n")
    data[2] = data[2].replace(b"/api/2", b"/api/9")
    path.write_bytes(b"\n".join(data))
    with pytest.raises(LogDamaged, match=r"seq 2 .*chain breaks.*garrison audit verify"):
        run(lambda: EventLog.open(tmp_path))


def test_a_damaged_complete_last_line_is_tampering_not_a_torn_write(tmp_path: Path) -> None:
    _fill(tmp_path, 3)
    path = _segment(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-2] + b"X\n")
    with pytest.raises(LogDamaged, match="seq 2"):
        run(lambda: EventLog.open(tmp_path))
