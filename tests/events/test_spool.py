"""The spool on its own: order by sequence (a batch spooled late still replays first), the size bound,
whole segments only across a crash, 0600 files, and one live process per directory."""

from __future__ import annotations

import os
from pathlib import Path

from garrison.events.spool import Spool


def test_segments_come_back_oldest_sequence_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", 1024 * 1024)
    spool.append(5, [b"e5"])
    spool.append(7, [b"e7a", b"e7b"])
    spool.append(4, [b"e4"])  # the batch that was in flight when 5 and 7 were spilled
    order = []
    while (segment := spool.oldest()) is not None:
        order.append(segment.read())
        spool.remove(segment)
    assert order == [[b"e4"], [b"e5"], [b"e7a", b"e7b"]]
    assert (spool.bytes, spool.events, len(spool)) == (0, 0, 0)


def test_the_bound_refuses_a_batch_that_would_pass_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", 100)
    assert spool.append(1, [b"x" * 60])
    assert not spool.append(2, [b"y" * 60])  # 61 + 61 > 100: refused whole, nothing written
    assert spool.append(3, [b"z" * 30])
    assert (spool.bytes, spool.events) == (92, 2)
    assert sorted(p.name for p in (tmp_path / "s").glob("*.ndjson")) == [
        "0000000000000001.ndjson",
        "0000000000000003.ndjson",
    ]


def test_a_restart_finds_whole_segments_and_drops_half_written_ones(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    first = Spool(directory, 1024 * 1024)
    first.append(1, [b"a", b"b"])
    first.append(2, [b"c"])
    first.close()
    (directory / ".tmp-0000000000000003").write_bytes(b"half")  # died while writing segment 3
    again = Spool(directory, 1024 * 1024)
    assert (again.events, again.bytes, again.next_sequence) == (3, 6, 3)
    assert not (directory / ".tmp-0000000000000003").exists()
    assert {p.stat().st_mode & 0o777 for p in directory.glob("*.ndjson")} == {0o600}
    assert directory.stat().st_mode & 0o777 == 0o700


def test_a_second_live_spool_gets_a_directory_of_its_own(tmp_path: Path) -> None:
    held = Spool(tmp_path / "s", 1024)
    other = Spool(tmp_path / "s", 1024)
    assert other.directory == tmp_path / f"s.{os.getpid()}"
    held.close()
    assert Spool(tmp_path / "s", 1024).directory == tmp_path / "s"  # released: the name is free again
