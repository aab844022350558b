"""When the gateway hands freed memory back (gateway/heap.py): the policy, driven without sockets."""

from __future__ import annotations

import platform

import pytest

from garrison.gateway.heap import HeapTrimmer, glibc_malloc_trim


class RecordingTrim:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, pad: int) -> int:
        self.calls.append(pad)
        return 1


def test_trims_once_nothing_is_open() -> None:
    trim = RecordingTrim()
    heap = HeapTrimmer(trim, after_closed=1000, interval=2.0)
    assert not heap.maybe_trim(open_now=0, closed_total=0, now=10.0)  # nothing closed: nothing to give
    assert heap.maybe_trim(open_now=0, closed_total=3, now=10.1)
    assert trim.calls == [0]
    assert heap.trims == 1
    assert heap.pending(3) == 0


def test_while_connections_are_open_waits_for_enough_closes() -> None:
    trim = RecordingTrim()
    heap = HeapTrimmer(trim, after_closed=100, interval=2.0)
    assert not heap.maybe_trim(open_now=50, closed_total=99, now=10.0)
    assert heap.pending(99) == 99
    assert heap.maybe_trim(open_now=50, closed_total=100, now=10.1)
    assert heap.pending(100) == 0
    assert not heap.maybe_trim(open_now=50, closed_total=150, now=20.0)  # counted from the last trim
    assert trim.calls == [0]


def test_never_more_often_than_the_interval() -> None:
    trim = RecordingTrim()
    heap = HeapTrimmer(trim, after_closed=10, interval=2.0)
    assert heap.maybe_trim(open_now=0, closed_total=10, now=10.0)
    assert not heap.maybe_trim(open_now=0, closed_total=500, now=11.9)
    assert heap.pending(500) == 490
    assert heap.maybe_trim(open_now=0, closed_total=500, now=12.0)
    assert len(trim.calls) == 2


def test_without_malloc_trim_nothing_is_pending_or_done() -> None:
    heap = HeapTrimmer(None)
    assert not heap.enabled
    assert not heap.maybe_trim(open_now=0, closed_total=5000, now=100.0)
    assert heap.pending(5000) == 0
    assert heap.trims == 0


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_malloc_trim_is_found_and_callable() -> None:
    trim = glibc_malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)
