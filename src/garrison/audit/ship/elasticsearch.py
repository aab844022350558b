"""Elasticsearch's bulk API: ``POST /_bulk``, NDJSON pairs of a ``create`` action and the document.

``create`` with ``_id`` = the event id makes a retry harmless: a document already stored answers 409
(version conflict), which means delivered. The answer is judged item by item, in order: 200/201 and
409 stored; 429 and 5xx items are sent again alone (the rest of the batch is not repeated); other
4xx items (a mapping conflict: ``details`` fields of one name and two types) are refused for good,
counted and skipped. The index name takes the event's UTC date (``garrison-audit-%Y.%m.%d``), so
retention can drop whole indices. The document is the event as logged plus ``@timestamp`` (what
Kibana sorts by) and ``seq`` (its place in the log, to find it with ``garrison audit verify``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from garrison.audit.pipeline import LoggedEvent
from garrison.audit.ship.receiver import Delivery, Receiver, whole_answer
from garrison.config.audit_shipping import ElasticsearchShipperConfig
from garrison.events.schema import rfc3339

__all__ = ["BULK_PATH", "ElasticsearchSink", "bulk_body", "index_name", "judge_items"]

BULK_PATH = "/_bulk"


def index_name(pattern: str, epoch: float) -> str:
    """``pattern`` with %Y, %m, %d from the UTC date (the config allows no other % fields)."""
    return time.strftime(pattern, time.gmtime(epoch))


def bulk_body(entries: Sequence[LoggedEvent], pattern: str) -> bytes:
    lines: list[str] = []
    for entry in entries:
        event = entry.event
        action = {"create": {"_index": index_name(pattern, event.time), "_id": event.id}}
        document = {"@timestamp": rfc3339(event.time), **event.to_dict(), "seq": entry.seq}
        lines.append(json.dumps(action, separators=(",", ":")))
        lines.append(json.dumps(document, separators=(",", ":"), ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode()


def judge_items(entries: Sequence[LoggedEvent], answer: Any) -> Delivery:
    """Per item of a 200 bulk answer: stored, to retry, or refused."""
    items = answer.get("items") if isinstance(answer, dict) else None
    if not isinstance(items, list) or len(items) != len(entries):
        return Delivery(retry=list(entries), error="bulk answer without one item per action")
    delivery = Delivery()
    if answer.get("errors") is False:
        return delivery
    for entry, item in zip(entries, items, strict=True):
        result: Any = next(iter(item.values()), {}) if isinstance(item, dict) and item else {}
        status = result.get("status") if isinstance(result, dict) else None
        if not isinstance(status, int):
            delivery.retry.append(entry)
        elif status in (200, 201, 409):
            continue
        elif status == 429 or status >= 500:
            delivery.retry.append(entry)
        else:
            delivery.skipped["refused"] = delivery.skipped.get("refused", 0) + 1
            if delivery.error is None:
                delivery.error = f"item {entry.seq}: {json.dumps(result.get('error'))[:300]}"
    if delivery.retry and delivery.error is None:
        delivery.error = f"{len(delivery.retry)} items to retry (429 or 5xx)"
    return delivery


class ElasticsearchSink:
    def __init__(self, spec: ElasticsearchShipperConfig, receiver: Receiver) -> None:
        self.receiver = receiver
        self._pattern = spec.index

    async def send(self, entries: Sequence[LoggedEvent]) -> Delivery:
        body = bulk_body(entries, self._pattern)
        answer = await self.receiver.post(BULK_PATH, body, "application/x-ndjson", {})
        decided = whole_answer(answer, entries)
        if decided is not None:
            return decided
        try:
            parsed = json.loads(answer.body)
        except ValueError:
            return Delivery(retry=list(entries), error="bulk answer is not JSON")
        return judge_items(entries, parsed)

    async def aclose(self) -> None:
        await self.receiver.aclose()
