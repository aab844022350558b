"""The Elasticsearch shipper against a bulk receiver on a real socket that parses the NDJSON strictly and
answers item by item as Elasticsearch does (201 created, 409 version conflict, 429, 400 mapping error)."""

from __future__ import annotations

import asyncio
import calendar
import json
import time
from pathlib import Path
from typing import Any

import pytest
from ship_receivers import MemoryLog, Receiver, Seen, sample_events, secret_file, serving, until

from garrison.audit.ship.service import ShippingService
from garrison.config.audit_shipping import ShippingConfig

pytestmark = pytest.mark.process  # uvicorn receivers on port-0 sockets


def parse_bulk(seen: Seen) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(action, document) pairs of a bulk request; every line a JSON object, the body ends with \\n."""
    assert seen.method == "POST" and seen.path == "/_bulk"
    assert seen.headers["content-type"] == "application/x-ndjson"
    assert seen.body.endswith(b"\n")
    lines = [json.loads(line) for line in seen.body[:-1].split(b"\n")]
    assert len(lines) % 2 == 0
    pairs = list(zip(lines[::2], lines[1::2], strict=True))
    for action, document in pairs:
        assert set(action) == {"create"} and set(action["create"]) == {"_index", "_id"}
        assert isinstance(document, dict) and "@timestamp" in document
    return pairs


class Elasticsearch:
    """Documents by id; ``fail_once``: ids answered 429 the first time; ``unmappable``: ids answered 400."""

    def __init__(self) -> None:
        self.documents: dict[str, tuple[str, dict[str, Any]]] = {}
        self.fail_once: set[str] = set()
        self.unmappable: set[str] = set()
        self.item_batches: list[list[str]] = []

    def __call__(self, seen: Seen) -> tuple[int, dict[str, str], bytes]:
        items, errors = [], False
        self.item_batches.append([])
        for action, document in parse_bulk(seen):
            index, doc_id = action["create"]["_index"], action["create"]["_id"]
            self.item_batches[-1].append(doc_id)
            result: dict[str, Any] = {"_index": index, "_id": doc_id}
            if doc_id in self.fail_once:
                self.fail_once.discard(doc_id)
                result.update(status=429, error={"type": "es_rejected_execution_exception"})
            elif doc_id in self.unmappable:
                result.update(status=400, error={"type": "document_parsing_exception", "reason": "mapper"})
            elif doc_id in self.documents:
                result.update(status=409, error={"type": "version_conflict_engine_exception"})
            else:
                self.documents[doc_id] = (index, document)
                result.update(status=201, result="created")
            errors = errors or result["status"] >= 300
            items.append({"create": result})
        return 200, {}, json.dumps({"took": 1, "errors": errors, "items": items}).encode()


def es_config(url: str, **extra: Any) -> ShippingConfig:
    spec = {"name": "es", "type": "elasticsearch", "url": url, "batch_wait": 0, "retry_initial": 0.01}
    return ShippingConfig.model_validate({"shippers": [{**spec, "retry_max": 0.05, **extra}]})


def test_create_actions_keyed_by_event_id_into_dated_indices(tmp_path: Path) -> None:
    events = sample_events(12, start=calendar.timegm((2026, 12, 7, 23, 59, 59, 0, 0, 0)) + 0.995)

    async def body() -> None:
        es, log = Elasticsearch(), MemoryLog()
        receiver = Receiver(es)
        key = secret_file(tmp_path / "es.key", "a2V5aWQ6c2VjcmV0")
        async with serving(receiver) as url:
            service = ShippingService(es_config(url, auth={"api_key_file": key}), tmp_path, wake=log.wake)
            service.start(log)
            log.append(*events)
            stats = service.metrics.stats("es")
            await until(lambda: stats.position == 12)
            await service.close()
        assert receiver.requests[0].headers["authorization"] == "ApiKey a2V5aWQ6c2VjcmV0"
        assert set(es.documents) == {event.id for event in events}
        for entry in log.entries:
            index, document = es.documents[entry.event.id]
            expected_day = time.strftime("%Y.%m.%d", time.gmtime(entry.event.time))
            assert index == f"garrison-audit-{expected_day}"
            assert document == {
                "@timestamp": entry.event.to_dict()["time"],
                **entry.event.to_dict(),
                "seq": entry.seq,
            }
        assert {index for index, _ in es.documents.values()} == {
            "garrison-audit-2026.12.07",
            "garrison-audit-2026.12.08",
        }
        assert stats.shipped == 12 and stats.failures == 0

    asyncio.run(body())


def test_an_item_refused_with_429_is_retried_alone_and_a_mapping_error_is_skipped(tmp_path: Path) -> None:
    events = sample_events(10)

    async def body() -> None:
        es, log = Elasticsearch(), MemoryLog()
        es.fail_once = {events[3].id}
        es.unmappable = {events[6].id}
        async with serving(Receiver(es)) as url:
            service = ShippingService(es_config(url), tmp_path, wake=log.wake)
            service.start(log)
            log.append(*events)
            stats = service.metrics.stats("es")
            await until(lambda: stats.position == 10)
            await service.close()
        assert es.item_batches == [[event.id for event in events], [events[3].id]]
        assert set(es.documents) == {event.id for event in events} - {events[6].id}
        assert stats.shipped == 9 and stats.failures == 1 and stats.skipped == {"refused": 1}

    asyncio.run(body())


def test_a_batch_sent_again_after_a_lost_answer_is_not_duplicated(tmp_path: Path) -> None:
    events = sample_events(6)

    async def body() -> None:
        es, log = Elasticsearch(), MemoryLog()
        answered = {"count": 0}

        def lose_first_answer(seen: Seen) -> tuple[int, dict[str, str], bytes]:
            status, headers, answer = es(seen)  # stored, but the shipper is told 503
            answered["count"] += 1
            return (503, {}, b"") if answered["count"] == 1 else (status, headers, answer)

        async with serving(Receiver(lose_first_answer)) as url:
            service = ShippingService(es_config(url), tmp_path, wake=log.wake)
            service.start(log)
            log.append(*events)
            stats = service.metrics.stats("es")
            await until(lambda: stats.position == 6)
            await service.close()
        assert len(es.item_batches) == 2 and len(es.documents) == 6  # the second try: 409 for each
        assert stats.shipped == 6 and stats.failures == 1 and not stats.skipped

    asyncio.run(body())


def test_a_request_over_the_size_limit_is_split_in_halves(tmp_path: Path) -> None:
    async def body() -> None:
        es, log = Elasticsearch(), MemoryLog()

        def limited(seen: Seen) -> tuple[int, dict[str, str], bytes]:
            if seen.body.count(b"\n") > 2 * 3:
                return 413, {}, b""
            return es(seen)

        receiver = Receiver(limited)
        async with serving(receiver) as url:
            service = ShippingService(es_config(url), tmp_path, wake=log.wake)
            service.start(log)
            log.append(*sample_events(10))
            stats = service.metrics.stats("es")
            await until(lambda: stats.position == 10)
            await service.close()
        assert len(es.documents) == 10 and stats.shipped == 10
        assert [len(batch) for batch in es.item_batches] == [2, 3, 2, 3]

    asyncio.run(body())
