"""The collector's parts without sockets, on a real log in tmp_path and a real index (SQLite and
PostgreSQL): deduplication (including a resend racing its original), 503 when the log cannot be
written, stages fed in log order, the index catching up over gaps, search filters, config checks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from audit_harness import TD, ndjson, sample
from db_backend import Backend
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.audit.collector import Collector
from garrison.audit.feeder import StageFeeder
from garrison.audit.index import EventIndex
from garrison.audit.intake import authenticate
from garrison.audit.log import EventLog
from garrison.audit.metrics import MAX_TYPES, CollectorMetrics
from garrison.audit.migrations import SCHEMA
from garrison.audit.pipeline import LoggedEvent
from garrison.audit.recent import RecentIds
from garrison.audit.search import SearchFilter, parse_actor, search
from garrison.config.loader import ConfigError, parse_config
from garrison.events.schema import Actor
from garrison.store.migrations import schema_diff, upgrade


class Recorder:
    def __init__(self) -> None:
        self.seen: list[int] = []

    async def committed(self, entries: Sequence[LoggedEvent]) -> None:
        self.seen.extend(entry.seq for entry in entries)


async def _collector(directory: Path, capacity: int = 1000) -> tuple[Collector, EventLog, Recorder]:
    log = await EventLog.open(directory)
    recorder = Recorder()
    feeder = StageFeeder([recorder], log.size())
    feeder.start()
    return Collector(log, CollectorMetrics(), feeder, RecentIds(capacity)), log, recorder


def test_concurrent_batches_share_commits_and_resends_are_logged_once(tmp_path: Path) -> None:
    async def main() -> None:
        collector, log, recorder = await _collector(tmp_path)
        batches = [[sample(n * 10 + i) for i in range(10)] for n in range(20)]
        answers = await asyncio.gather(
            *(collector.submit("token", ndjson(batch)) for batch in batches),
            *(collector.submit("token", ndjson(batch)) for batch in batches[:5]),  # resent at once
        )
        assert all(answer.status == 200 for answer in answers)
        assert sum(a.payload["accepted"] for a in answers) == 200 == log.size()
        assert sum(a.payload["duplicates"] for a in answers) == 50
        await collector.feeder.flush()
        assert recorder.seen == list(range(200))  # in log order, each once
        await collector.feeder.close()
        await log.close()
        reopened, _, _ = await _collector(tmp_path)
        await reopened.remember_tail()  # a restart still knows what was logged
        again = await reopened.submit("token", ndjson(batches[7]))
        assert again.payload == {"accepted": 0, "duplicates": 10, "rejected": []}
        await reopened.feeder.close()
        await reopened.store.close()  # type: ignore[attr-defined]

    asyncio.run(main())


def test_nothing_is_acknowledged_when_the_log_cannot_be_written(tmp_path: Path) -> None:
    async def main() -> None:
        collector, log, _ = await _collector(tmp_path)
        await log.close()
        batch = [sample(1)]
        answer = await collector.submit("token", ndjson(batch))
        assert answer.status == 503 and "cannot be written" in answer.payload["error"]
        assert collector.last_failure is not None
        assert collector.recent.claim(batch[0].id) == "new"  # not remembered as logged: a resend is logged
        await collector.feeder.close()

    asyncio.run(main())


def test_the_window_forgets_the_oldest_and_bounds_long_ids() -> None:
    async def main() -> None:
        recent = RecentIds(capacity=3)
        recent.remember(["a", "b", "c", "d"])
        assert len(recent) == 3 and recent.claim("a") == "new" and recent.claim("d") == "logged"
        long_id = "x" * 1000
        recent.remember([long_id])
        assert recent.claim(long_id) == "logged"

    asyncio.run(main())


def test_stages_get_batches_in_log_order_whatever_order_they_arrive() -> None:
    async def main() -> None:
        recorder = Recorder()
        feeder = StageFeeder([recorder], 0)
        metrics = CollectorMetrics()
        metrics.watch_stages(lambda: feeder.through, lambda: feeder.backlog)
        feeder.start()

        def staged() -> tuple[float | None, float | None]:
            read = metrics.registry.get_sample_value
            return read("garrison_audit_staged_entries"), read("garrison_audit_stage_backlog")

        def batch(start: int, count: int) -> list[LoggedEvent]:
            return [LoggedEvent(seq, sample(seq), b"") for seq in range(start, start + count)]

        await feeder.deliver(batch(3, 2), wait=False)
        await feeder.deliver(batch(1, 2), wait=False)
        await asyncio.sleep(0)
        assert recorder.seen == []  # seq 0 has not come yet
        assert staged() == (0, 4)  # the metrics: nothing through the stages, 4 waiting
        await feeder.deliver(batch(0, 1))
        await feeder.flush()
        assert recorder.seen == [0, 1, 2, 3, 4]
        assert staged() == (5, 0)
        await feeder.close()

    asyncio.run(main())


def test_credentials() -> None:
    token = "t" * 43
    assert authenticate(f"spiffe://{TD}/svc/orders", None, TD, token) == f"spiffe://{TD}/svc/orders"
    assert authenticate("spiffe://other.td/svc/orders", None, TD, token) is None
    assert authenticate(f"spiffe://{TD}.evil/x", b"Bearer " + token.encode(), TD, token) == "token"
    assert authenticate(None, b"bearer " + token.encode(), TD, token) == "token"
    assert authenticate(None, b"Bearer " + token[:-1].encode(), TD, token) is None
    assert authenticate(None, b"Basic " + token.encode(), TD, token) is None


def test_type_labels_are_capped() -> None:
    metrics = CollectorMetrics()
    entries = [LoggedEvent(n, sample(n, type=f"kind.n{n}"), b"") for n in range(MAX_TYPES + 5)]
    metrics.logged(entries, len(entries))
    other = metrics.registry.get_sample_value(
        "garrison_audit_events_total", {"component": "identity", "type": "other", "outcome": "failure"}
    )
    assert other == 5


def test_config_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "audit:\n  listen: 0.0.0.0:7400\n  tls: {insecure_disable: true}\n", "garrison.yaml", tmp_path
        )
    assert [p.path for p in caught.value.problems] == ["audit.tls.insecure_disable"]
    with pytest.raises(ConfigError) as caught:
        parse_config("audit:\n  admin: {listen: 0.0.0.0:9904}\n", "garrison.yaml", tmp_path)
    assert [p.path for p in caught.value.problems] == ["audit.admin.listen"]
    loaded = parse_config("audit:\n  tls: {insecure_disable: true}\n", "garrison.yaml", tmp_path)
    assert "audit.tls.insecure_disable" in [w.path for w in loaded.warnings]


def test_actor_filters_parse() -> None:
    assert parse_actor("ip:192.0.2.7") == ("actor_ip", "192.0.2.7")
    assert parse_actor("service:spiffe://x/y") == ("actor_service", "spiffe://x/y")
    for bad in ("alice", "user:alice", "ip:"):
        with pytest.raises(ValueError, match="KIND:VALUE"):
            parse_actor(bad)


def test_index_catches_up_and_filters(backend: Backend, tmp_path: Path) -> None:
    async def main() -> None:
        engine: AsyncEngine = backend.engine()
        log = await EventLog.open(tmp_path / "log")
        try:
            await upgrade(engine, SCHEMA)
            assert await schema_diff(engine, SCHEMA) == []
            base = 1_800_000_000.0
            events = [
                sample(
                    0, time=base, trace_id="t1", component="gateway", type="http.request", outcome="success"
                ),
                sample(1, time=base + 10, trace_id="t1", actor=Actor(subject="bob", ip="198.51.100.1")),
                sample(
                    2,
                    time=base + 5,
                    trace_id="t1",
                    component="mesh",
                    type="mesh.call",
                    outcome="denied",
                    actor=Actor(service=f"spiffe://{TD}/svc/orders"),
                ),
                sample(3, time=base + 20, actor=Actor(client="shop-web")),
            ]
            logged = await log.append(events[:2])
            index = EventIndex(engine, log)
            assert await index.load_position() == 0
            await index.committed(logged)
            more = await log.append(events[2:3])  # never handed to the index: a gap
            last = await log.append(events[3:])
            await index.committed(last)  # catches up over the gap from the log
            await index.committed(more)  # late and already indexed: ignored
            assert index.next_seq == 4 and index.failing is None
            again = EventIndex(engine, log)
            assert await again.load_position() == 4 and await again.catch_up() == 0

            async def seqs(**where: object) -> list[int]:
                return [found.event["details"]["n"] for found in await search(engine, SearchFilter(**where))]  # type: ignore[arg-type]

            assert await seqs() == [3, 1, 2, 0]  # newest first
            assert await seqs(trace_id="t1") == [0, 2, 1]  # a trace in the order it happened
            assert await seqs(since=base + 5, until=base + 20) == [1, 2]
            assert await seqs(actor=parse_actor("ip:198.51.100.1")) == [1]
            assert await seqs(actor=parse_actor(f"service:spiffe://{TD}/svc/orders")) == [2]
            assert await seqs(actor=parse_actor("client:shop-web")) == [3]
            assert await seqs(actor=parse_actor("subject:alice")) == [0]
            assert await seqs(outcome="failure") == [3, 1]
            assert await seqs(type="auth.login", component="identity") == [3, 1]
            assert await seqs(limit=2) == [3, 1]
        finally:
            await log.close()
            await engine.dispose()

    asyncio.run(main())


def test_event_times_are_read_strictly_and_origin_is_the_collectors() -> None:
    from garrison.events.schema import Event, EventError

    line = sample(1, origin="spiffe://forged").to_json()
    event = Event.from_json(line, "token")
    assert event.origin == "token" and Event.from_json(line).origin == "spiffe://forged"
    good = sample(time=1_800_000_000.25)
    assert Event.from_json(good.to_json()).time == 1_800_000_000.25
    for bad in (
        "2026-12-07T10:00:00,000000Z",
        "2026-12-07 10:00:00.000000Z",
        "2026-02-30T10:00:00.000000Z",
        "2026-12-07T10:00:00.000000+00:00",
        "2026-12-07T10:00:00Z",
    ):
        with pytest.raises(EventError, match="RFC 3339"):
            Event.from_json(good.to_json().replace(good.to_dict()["time"].encode(), bad.encode()))


def test_the_collectors_own_events_are_logged_staged_and_remembered(tmp_path: Path) -> None:
    async def main() -> None:
        collector, log, recorder = await _collector(tmp_path)
        alert = sample(1, component="audit", type="audit.alert")
        [logged] = await collector.append([alert])
        assert logged.seq == 0 and log.size() == 1
        answer = await collector.submit("token", ndjson([alert]))  # the same id from outside: a duplicate
        assert answer.payload["duplicates"] == 1
        await collector.feeder.flush()
        assert recorder.seen == [0]
        await collector.feeder.close()
        await log.close()

    asyncio.run(main())
