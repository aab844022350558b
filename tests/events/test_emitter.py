"""The delivering emitter against an intake that follows the contract (tests/helpers/audit_receiver.py),
over real TLS on port 0: delivery with the emit token and with a workload certificate, spooling while
the collector is away or failing, replay in order after it returns and after a restart, a full spool
(counted drops, emit never waiting), and rejected lines counted."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from audit_receiver import TD, Receiver, intake_pki
from certs import TestCA
from cryptography.x509.oid import ExtendedKeyUsageOID
from prometheus_client import CollectorRegistry

from garrison.events.emitter import AuditEmitter, register_metrics
from garrison.events.schema import Event
from garrison.events.settings import EmitterSettings

pytestmark = pytest.mark.process  # real TLS listeners


def settings(state_dir: Path, url: str, **overrides: object) -> EmitterSettings:
    base = EmitterSettings(
        url=url, state_dir=state_dir, trust_domain=TD, mesh=False, tls_auto=True,
        batch_max=10, flush_interval=0.01, memory_max=1000, spool_max=1024 * 1024,
    )  # fmt: skip
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def emitter(config: EmitterSettings, **kwargs: object) -> AuditEmitter:
    return AuditEmitter(config, "gateway", "test-1", retry_base=0.02, retry_cap=0.1, **kwargs)  # type: ignore[arg-type]


def events(count: int, start: int = 0, type_: str = "test.event") -> list[Event]:
    return [Event(component="gateway", type=type_, details={"n": i}) for i in range(start, start + count)]


async def until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` in the loop (the emitter runs between polls); a ceiling, not an expectation."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


def test_delivers_over_tls_with_the_emit_token(tmp_path: Path) -> None:
    pki = intake_pki(tmp_path)
    receiver = Receiver(pki)

    async def body() -> None:
        await receiver.start()
        sender = emitter(settings(tmp_path, receiver.url))
        registry = CollectorRegistry()
        register_metrics(sender, registry)
        await sender.start()
        sent = events(25)
        for event in sent:
            sender.emit(event)
        await until(lambda: len(receiver.events) == 25, "25 events")
        await sender.close()
        await receiver.stop()
        assert receiver.ids == [event.id for event in sent]  # once each, in order
        assert {batch.origin for batch in receiver.batches} == {"token"}
        assert registry.get_sample_value("garrison_audit_emitted_total") == 25
        assert registry.get_sample_value("garrison_audit_delivered_total") == 25
        assert registry.get_sample_value("garrison_audit_spool_events") == 0
        assert receiver.requests <= 3 + 1  # batches of 10 on one connection, not one request per event
        assert receiver.connections == 1  # kept alive between batches (one TLS handshake, not one each)

    run(body)


def mesh_pki(tmp_path: Path, server_id: str) -> tuple[Receiver, Callable[[], ssl.SSLContext]]:
    """A mesh CA (state_dir/ca) that issued the collector's certificate and the caller's workload one."""
    mesh_ca = TestCA.create("Test mesh CA")
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    bundle = mesh_ca.write(ca_dir / "bundle.pem")
    (ca_dir / "issuing.pem").write_bytes(bundle.read_bytes())  # "the mesh CA exists"
    pki = intake_pki(tmp_path, ca=mesh_ca)
    cert, key = mesh_ca.issue(
        tmp_path / "audit" / "tls", "server", uris=(server_id,), dns=("localhost",), ips=("127.0.0.1",),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )  # fmt: skip
    pki.cert, pki.key = cert, key
    workload_cert, workload_key = mesh_ca.issue(tmp_path, "orders", uris=(f"spiffe://{TD}/svc/orders",))
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False  # as pki/workload_tls.py builds a workload's context
    client.load_verify_locations(cafile=str(bundle))
    client.load_cert_chain(str(workload_cert), str(workload_key))
    return Receiver(pki, client_ca=bundle), lambda: client


def test_delivers_with_a_workload_certificate_and_no_token(tmp_path: Path) -> None:
    receiver, context = mesh_pki(tmp_path, f"spiffe://{TD}/audit")
    (tmp_path / "audit" / "emit.token").unlink()  # not needed: the certificate is the credential

    async def body() -> None:
        await receiver.start()
        sender = emitter(settings(tmp_path, receiver.url, mesh=True), client_context=context)
        await sender.start()
        sent = events(12)
        for event in sent:
            sender.emit(event)
        await sender.close()
        await receiver.stop()
        assert receiver.ids == [event.id for event in sent]
        seen = {(b.origin, b.authorization) for b in receiver.batches}
        assert seen == {(f"spiffe://{TD}/svc/orders", False)}

    run(body)


def test_a_workload_that_is_not_the_collector_gets_no_events(tmp_path: Path) -> None:
    """A mesh certificate of another workload (same CA) is not the collector: nothing is sent to it."""
    receiver, context = mesh_pki(tmp_path, f"spiffe://{TD}/svc/payments")

    async def body() -> None:
        await receiver.start()
        sender = emitter(settings(tmp_path, receiver.url, mesh=True), client_context=context)
        await sender.start()
        for event in events(5):
            sender.emit(event)
        await until(lambda: sender.stats.spool_events == 5, "5 spooled events")
        await sender.close()
        await receiver.stop()
        assert receiver.requests == 0 and receiver.events == []

    run(body)


def test_outage_spools_then_replays_everything_once_in_order(tmp_path: Path) -> None:
    pki = intake_pki(tmp_path)
    receiver = Receiver(pki)

    async def body() -> None:
        port = await receiver.start()
        await receiver.stop()  # the collector is down: connections are refused
        sender = emitter(settings(tmp_path, f"https://127.0.0.1:{port}"))
        await sender.start()
        first = events(30)
        for event in first:
            sender.emit(event)
        await until(lambda: sender.stats.spool_events == 30, "30 spooled events")
        spool_dir = tmp_path / "audit" / "spool" / "gateway-test-1"
        assert sorted(p.stat().st_mode & 0o777 for p in spool_dir.glob("*.ndjson")) == [0o600] * 3
        await receiver.start(port)  # back
        second = events(15, start=30)
        for event in second:
            sender.emit(event)  # queued behind the spool, never before it
        await until(lambda: len(receiver.events) == 45, "45 delivered events")
        await sender.close()
        await receiver.stop()
        assert receiver.ids == [event.id for event in first + second]
        assert sender.stats.spool_events == 0 and sender.stats.delivered == 45
        assert list(spool_dir.glob("*.ndjson")) == []

    run(body)


def test_a_503_keeps_the_batch_until_the_collector_stores_it(tmp_path: Path) -> None:
    pki = intake_pki(tmp_path)
    receiver = Receiver(pki, mode="unavailable")

    async def body() -> None:
        await receiver.start()
        sender = emitter(settings(tmp_path, receiver.url))
        await sender.start()
        sent = events(20)
        for event in sent:
            sender.emit(event)
        await until(lambda: sender.stats.spool_events == 20 and receiver.refused.get(503), "503 and a spool")
        receiver.mode = "ok"
        await until(lambda: len(receiver.events) == 20, "20 delivered events")
        await sender.close()
        await receiver.stop()
        assert receiver.ids == [event.id for event in sent]

    run(body)


def test_a_missing_token_means_the_collector_has_not_started_yet(tmp_path: Path) -> None:
    pki = intake_pki(tmp_path)
    token_file = tmp_path / "audit" / "emit.token"
    saved = token_file.read_bytes()
    token_file.unlink()
    receiver = Receiver(pki)

    async def body() -> None:
        await receiver.start()
        sender = emitter(settings(tmp_path, receiver.url))
        await sender.start()
        sent = events(5)
        for event in sent:
            sender.emit(event)
        await until(lambda: sender.stats.spool_events == 5, "5 spooled events")
        token_file.write_bytes(saved)
        token_file.chmod(0o600)
        await until(lambda: len(receiver.events) == 5, "5 delivered events")
        await sender.close()
        await receiver.stop()
        assert receiver.ids == [event.id for event in sent]

    run(body)


def test_a_hanging_collector_never_blocks_emit_and_a_full_spool_counts_its_drops(tmp_path: Path) -> None:
    pki = intake_pki(tmp_path)
    receiver = Receiver(pki, mode="hang")
    total = 5000

    async def body() -> None:
        await receiver.start()
        config = settings(tmp_path, receiver.url, memory_max=200, batch_max=20, spool_max=16 * 1024)
        sender = emitter(config)
        sender.client.answer_timeout = 3600  # the collector hangs for the whole test
        sender.close_timeout = 0.2
        await sender.start()
        for i, event in enumerate(events(total)):
            sender.emit(event)  # synchronous: returns without waiting for anything
            if i % 50 == 0:
                await asyncio.sleep(0)  # the pump and the spiller run between requests
        await until(lambda: sender.stats.dropped["spool_full"] > 0, "spool_full drops")
        stats = sender.stats
        assert receiver.requests == 1  # the first batch is stuck in flight; nothing else was sent
        assert stats.spool_bytes <= config.spool_max
        assert stats.emitted + stats.dropped["memory_full"] == total
        await sender.close()  # the stuck batch is given up on after CLOSE_TIMEOUT and spooled (or dropped)
        await receiver.stop()
        accounted = stats.spool_events + stats.dropped["spool_full"] + stats.dropped["memory_full"]
        assert accounted == total  # nothing delivered, nothing lost without being counted

    run(body)


def test_a_restart_delivers_what_the_previous_run_spooled(tmp_path: Path) -> None:
    pki = intake_pki(tmp_path)
    receiver = Receiver(pki)

    async def body() -> None:
        port = await receiver.start()
        await receiver.stop()
        before = emitter(settings(tmp_path, f"https://127.0.0.1:{port}"))
        await before.start()
        spooled = events(25)
        for event in spooled:
            before.emit(event)
        await before.close()  # the collector is away: memory goes to the spool
        late = events(1, start=25)
        before.emit(late[0])  # after close: straight to the spool, for the next start
        assert before.stats.spool_events == 26
        await receiver.start(port)
        after = emitter(settings(tmp_path, f"https://127.0.0.1:{port}"))
        await after.start()
        assert after.stats.spool_events == 26
        fresh = events(5, start=26)
        for event in fresh:
            after.emit(event)
        await until(lambda: len(receiver.events) == 31, "31 delivered events")
        await after.close()
        await receiver.stop()
        assert receiver.ids == [event.id for event in spooled + late + fresh]

    run(body)


def test_rejected_lines_are_counted_and_never_sent_again(tmp_path: Path) -> None:
    pki = intake_pki(tmp_path)
    receiver = Receiver(pki, reject_types={"test.refused"})

    async def body() -> None:
        await receiver.start()
        sender = emitter(settings(tmp_path, receiver.url))
        registry = CollectorRegistry()
        register_metrics(sender, registry)
        await sender.start()
        good = events(3)
        for event in [*good[:2], *events(2, type_="test.refused"), good[2]]:
            sender.emit(event)
        sender.emit(Event(component="nobody", type="test.event"))  # not a component: the schema refuses it
        await until(lambda: sender.stats.dropped["rejected"] == 3, "3 rejected")
        await sender.close()
        await receiver.stop()
        assert receiver.ids == [event.id for event in good]
        assert registry.get_sample_value("garrison_audit_dropped_total", {"reason": "rejected"}) == 3
        assert receiver.requests == 1

    run(body)
