"""Request ids and W3C trace context: new ids are well-formed and never repeat; valid ones continue."""

from __future__ import annotations

import re

from garrison.proxy.trace import trace_context

TRACE = b"4bf92f3577b34da6a3ce929d0e0e4736"


def test_new_ids_are_well_formed_and_distinct() -> None:
    seen: set[bytes] = set()
    for _ in range(1000):  # more than one batch of the id pool
        request_id, trace_id, span_id, flags = trace_context(None, None)
        assert re.fullmatch(rb"[0-9a-f]{32}", request_id) and re.fullmatch(rb"[0-9a-f]{32}", trace_id)
        assert re.fullmatch(rb"[0-9a-f]{16}", span_id) and flags == b"01"
        seen.update((request_id, trace_id, span_id))
    assert len(seen) == 3000


def test_a_client_request_id_and_traceparent_are_continued() -> None:
    request_id, trace_id, span_id, flags = trace_context(b"abc-123", b"00-%s-00f067aa0ba902b7-00" % TRACE)
    assert (request_id, trace_id, flags) == (b"abc-123", TRACE, b"00")
    assert span_id != b"00f067aa0ba902b7" and re.fullmatch(rb"[0-9a-f]{16}", span_id)


def test_only_one_of_the_two_given() -> None:
    request_id, trace_id, _, _ = trace_context(b"bad id with spaces", None)
    assert re.fullmatch(rb"[0-9a-f]{32}", request_id) and re.fullmatch(rb"[0-9a-f]{32}", trace_id)
    request_id, trace_id, _, _ = trace_context(None, b"00-%s-00f067aa0ba902b7-01" % TRACE)
    assert trace_id == TRACE and re.fullmatch(rb"[0-9a-f]{32}", request_id)
