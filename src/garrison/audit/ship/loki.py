"""Loki's push API: ``POST /loki/api/v1/push``, JSON ``{"streams": [{"stream": labels, "values":
[[ns timestamp string, line], ...]}]}``.

Labels are few and bounded: ``job``, ``component`` (6 values), ``outcome`` (5) and the fixed ones the
operator set. Ids, subjects, IPs and paths never become labels: each distinct label set is a stream
in Loki's index, and per-event values would explode it; they stay in the line (the logged JSON, the
same bytes the Merkle tree hashed), where LogQL's ``| json`` reads them. Loki wants each stream's
entries in time order, so each stream's part of a batch is sorted by event time (stably: log order
among equal times). Loki answers 400 when it refuses entries (too old, too far in the future, a line
too long), having stored the rest: that verdict does not change on retry, so the refused entries
(its "total ignored: N out of M") are counted as skipped and the batch is not sent again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from garrison.audit.pipeline import LoggedEvent
from garrison.audit.ship.receiver import Delivery, Receiver, whole_answer
from garrison.config.audit_shipping import LokiShipperConfig

__all__ = ["PUSH_PATH", "LokiSink", "ignored", "push_body", "unix_nanos"]

PUSH_PATH = "/loki/api/v1/push"
_IGNORED = re.compile(r"total ignored: (\d+) out of (\d+)")


def unix_nanos(epoch: float) -> int:
    """Nanoseconds from epoch seconds, through whole microseconds (the log's precision), so float
    noise cannot reorder or change two equal times."""
    return round(epoch * 1_000_000) * 1000


def push_body(entries: Sequence[LoggedEvent], job: str, fixed: dict[str, str]) -> bytes:
    streams: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for entry in entries:
        key = (entry.event.component, entry.event.outcome)
        streams.setdefault(key, []).append(
            (unix_nanos(entry.event.time), entry.line.decode("utf-8", "replace"))
        )
    body: list[dict[str, Any]] = []
    for (component, outcome), values in streams.items():
        values.sort(key=lambda value: value[0])
        labels = {**fixed, "job": job, "component": component, "outcome": outcome}
        body.append({"stream": labels, "values": [[str(ns), line] for ns, line in values]})
    return json.dumps({"streams": body}, separators=(",", ":"), ensure_ascii=False).encode()


def ignored(answer: bytes, sent: int) -> int:
    """How many of ``sent`` entries a 400 refused: Loki stores the valid entries of a push and ends its
    complaint with "total ignored: N out of M"; without that line, all of them."""
    found = _IGNORED.search(answer.decode("utf-8", "replace"))
    if found is None or int(found.group(2)) != sent:
        return sent
    return min(int(found.group(1)), sent)


class LokiSink:
    def __init__(self, spec: LokiShipperConfig, receiver: Receiver) -> None:
        self.receiver = receiver
        self._job = spec.job
        self._labels = dict(spec.labels)
        self._headers = {} if spec.tenant is None else {"X-Scope-OrgID": spec.tenant}

    async def send(self, entries: Sequence[LoggedEvent]) -> Delivery:
        body = push_body(entries, self._job, self._labels)
        answer = await self.receiver.post(PUSH_PATH, body, "application/json", self._headers)
        delivery = whole_answer(answer, entries) or Delivery()
        if answer.status == 400:
            delivery.skipped = {"refused": ignored(answer.body, len(entries))}
        return delivery

    async def aclose(self) -> None:
        await self.receiver.aclose()
