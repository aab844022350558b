"""Acknowledged means durable: `kill -9` of the collector amid a stream of batches loses none that were
acknowledged, a resend after the restart is logged once, and the index catches up from the log. The
search CLI on a collector whose index is in PostgreSQL, and `garrison db` covering the audit index."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from audit_harness import NDJSON, AuditProcess, audit_config, ndjson, sample
from identity_harness import postgres_database
from waiting import wait_until

from garrison.audit.log import EventLog
from garrison.events.schema import Actor, Event

pytestmark = pytest.mark.process

WRITERS = 4
BATCH = 50


def _log_ids(state_dir: Path, own: bool = False) -> list[str]:
    """The ids of the posted events in the log; with ``own``, the collector's own events too (its
    detection may raise an alert on the stream and log it at any moment)."""

    async def read() -> list[str]:
        log = await EventLog.open(state_dir / "audit" / "log")
        try:
            entries = await log.read(0, log.size())
            return [entry.event.id for entry in entries if own or entry.event.component != "audit"]
        finally:
            await log.close()

    return asyncio.run(read())


class Stream:
    """WRITERS threads posting batches until the collector stops answering; what was acknowledged."""

    def __init__(self, process: AuditProcess) -> None:
        self.process = process
        self.acked: list[str] = []
        self.unacked: list[list[Event]] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._write, args=(n,)) for n in range(WRITERS)]

    def _write(self, writer: int) -> None:
        headers = {**NDJSON, "authorization": f"Bearer {self.process.token}"}
        with self.process.client() as client:
            for number in range(10_000):
                batch = [sample(number, trace_id=f"w{writer}") for _ in range(BATCH)]
                try:
                    answer = client.post(self.process.url, content=ndjson(batch), headers=headers)
                except httpx.HTTPError:
                    with self.lock:
                        self.unacked.append(batch)
                    return
                assert answer.status_code == 200, answer.text
                with self.lock:
                    self.acked.extend(event.id for event in batch)

    def acknowledged(self) -> int:
        with self.lock:
            return len(self.acked)


def test_kill_9_loses_no_acknowledged_event(tmp_path: Path) -> None:
    process = AuditProcess(tmp_path, audit_config(tmp_path)).start()
    stream = Stream(process)
    for thread in stream.threads:
        thread.start()
    try:
        wait_until(lambda: stream.acknowledged() >= 20 * BATCH, timeout=60)
        process.kill()
    finally:
        for thread in stream.threads:
            thread.join(60)
    acked = set(stream.acked)
    process.start()
    # A resend of every batch whose answer never came: logged once, whether or not it was durable.
    for batch in stream.unacked:
        answer = process.post(ndjson(batch))
        assert answer.status_code == 200 and answer.json()["accepted"] + answer.json()["duplicates"] == BATCH
    assert process.stop() == 0, process.stderr()  # the drain hands the stages every durable batch
    searched = process.search("--limit", "100000")  # the index, read directly: no collector running
    indexed = {event["id"] for event in searched if event["component"] != "audit"}
    assert acked <= indexed  # the index caught up from the log at start
    logged = _log_ids(process.state_dir)
    assert acked <= set(logged)
    assert max(Counter(logged).values()) == 1  # nothing logged twice
    assert len(logged) == len(indexed)
    verified = process.cli("audit", "verify")  # chain and the checkpoint signed at the drain
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.fixture(scope="module")
def pg_collector(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[AuditProcess]:
    directory = tmp_path_factory.mktemp("pg-collector")
    with postgres_database(postgres_url) as database:
        process = AuditProcess(directory, audit_config(directory, database=database)).start()
        try:
            yield process
        finally:
            assert process.stop() == 0, process.stderr()


def test_search_filters_on_postgresql(pg_collector: AuditProcess) -> None:
    process = pg_collector
    events = [
        sample(
            0,
            component="gateway",
            type="http.request",
            outcome="success",
            trace_id="pg-trace",
            actor=Actor(ip="203.0.113.9"),
        ),
        sample(1, trace_id="pg-trace", actor=Actor(subject="mallory", ip="203.0.113.9")),
        sample(
            2,
            component="mesh",
            type="mesh.call",
            outcome="denied",
            trace_id="pg-trace",
            actor=Actor(service="spiffe://shop.local/svc/orders"),
        ),
        sample(3, actor=Actor(client="shop-web")),
    ]
    assert process.post(ndjson(events)).json()["accepted"] == 4

    def numbers(*args: str) -> list[int]:
        return [event["details"]["n"] for event in process.search(*args)]

    # Every filter is checked on PostgreSQL in test_collector.py; here, the collector's index in it.
    assert wait_until(lambda: numbers("--trace-id", "pg-trace")) == [0, 1, 2]
    assert numbers("--actor", "ip:203.0.113.9", "--since", "1h") == [1, 0]
    status = process.cli("db", "status")
    [row] = [line for line in status.stdout.splitlines() if line.startswith("│ audit ")]
    assert "audit_0001" in row and "up to date" in row, status.stdout


def test_sigterm_amid_a_stream_answers_what_it_took_and_checkpoints_the_end(tmp_path: Path) -> None:
    from garrison.audit.checkpoints import read_checkpoints

    process = AuditProcess(tmp_path, audit_config(tmp_path)).start()
    stream = Stream(process)
    for thread in stream.threads:
        thread.start()
    try:
        wait_until(lambda: stream.acknowledged() >= 10 * BATCH, timeout=60)
        assert process.stop() == 0, process.stderr()  # SIGTERM: a drain, not a crash
    finally:
        for thread in stream.threads:
            thread.join(60)
    logged = _log_ids(process.state_dir, own=True)
    assert set(stream.acked) <= set(logged)
    checkpoints = read_checkpoints(process.state_dir / "audit" / "log" / "checkpoints.jsonl")
    assert checkpoints[-1].size == len(logged)  # the drain signed the log's last entry
    assert '"audit.stopped"' in process.stderr()
