"""pki/workload against an in-process CA (the real component on port 0, SQLite): saved identities,
the renewal schedule (injected clock and sleep), contexts updated in place, lapses, SPIFFE checks."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from ca_inprocess import running_ca
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from garrison.mesh.ca.server import CaComponent
from garrison.pki.authority import pem
from garrison.pki.workload import (
    RENEW_RETRY_MAX,
    JoinTokenNeeded,
    MeshState,
    PeerIdentityMismatch,
    WorkloadIdentity,
    connect,
    require_spiffe_id,
)
from garrison.telemetry import logging as log

pytestmark = pytest.mark.process  # real CA processes (or an in-process CA) and TLS listeners

ORDERS = "spiffe://shop.local/svc/orders"
PAYMENTS = "spiffe://shop.local/svc/payments"


async def token_for(ca: CaComponent, spiffe_id: str) -> str:
    assert ca.parts is not None
    return await ca.parts.tokens.mint(spiffe_id, dt.timedelta(minutes=5))


def identity(
    ca: CaComponent, directory: Path, token: str | None = None, **options: object
) -> WorkloadIdentity:
    assert ca.parts is not None
    return WorkloadIdentity(
        ca.url,  # type: ignore[attr-defined]
        directory,
        ca_bundle=ca.parts.files.bundle_file,
        join_token=token,
        **options,  # type: ignore[arg-type]
    )


class Sleeps:
    """An injected sleep: records each delay, then waits until the test lets it return."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.asked.set()
        await self.release.wait()
        self.release.clear()


def serial(path: Path) -> int:
    return x509.load_pem_x509_certificates(path.read_bytes())[0].serial_number


def test_renewal_is_due_at_about_half_life_and_a_restart_renews(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_ca(tmp_path / "ca") as ca:
            sleeps = Sleeps()
            first = identity(
                ca, tmp_path / "w", await token_for(ca, ORDERS), sleep=sleeps, jitter=lambda: 0.0
            )
            await first.start()
            await asyncio.wait_for(sleeps.asked.wait(), 10)
            lifetime = (first.not_after - first._current().not_before).total_seconds()
            assert sleeps.delays[0] == pytest.approx(0.45 * lifetime - 60, abs=5)  # 1 min backdated
            await first.close()
            before = serial(tmp_path / "w" / "identity.pem")
            # A restart past half-life, without a token: it renews at once with the saved certificate.
            late = first.not_after - dt.timedelta(minutes=1)

            def clock() -> dt.datetime:  # late for the saved certificate; now for the renewed one
                saved = serial(tmp_path / "w" / "identity.pem") == before
                return late if saved else dt.datetime.now(dt.UTC)

            second = identity(ca, tmp_path / "w", clock=clock, follow_state=False)
            await second.start()
            assert second.spiffe_id == ORDERS
            while serial(tmp_path / "w" / "identity.pem") == before:
                await asyncio.sleep(0.01)
            await second.close()

    asyncio.run(body())


def test_a_lapsed_certificate_needs_a_new_join_token(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_ca(tmp_path / "ca") as ca:
            first = identity(ca, tmp_path / "w", await token_for(ca, ORDERS), follow_state=False)
            await first.start()
            await first.close()
            after = first.not_after + dt.timedelta(seconds=1)
            lapsed = identity(ca, tmp_path / "w", clock=lambda: after, follow_state=False)
            with pytest.raises(JoinTokenNeeded, match="a new join token is needed"):
                await lapsed.start()

    asyncio.run(body())


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"x")
    await writer.drain()
    return await reader.readexactly(1)


def test_renewal_loads_into_the_live_contexts_and_open_connections_stay(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_ca(tmp_path / "ca") as ca:
            server_id = identity(ca, tmp_path / "s", await token_for(ca, PAYMENTS), follow_state=False)
            client_id = identity(ca, tmp_path / "c", await token_for(ca, ORDERS), follow_state=False)
            await server_id.start()
            await client_id.start()
            seen: list[int] = []

            async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                require_spiffe_id(writer.get_extra_info("ssl_object"), ORDERS)
                while await reader.read(1):
                    writer.write(b"k")
                writer.close()

            context = server_id.server_context()
            server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
            port = server.sockets[0].getsockname()[1]
            old = await connect("127.0.0.1", port, client_id, PAYMENTS)
            seen.append(x509.load_der_x509_certificate(_peer_der(old[1])).serial_number)
            await server_id.renew()
            assert server_id.server_context() is context  # loaded in place
            new = await connect("127.0.0.1", port, client_id, PAYMENTS)
            seen.append(x509.load_der_x509_certificate(_peer_der(new[1])).serial_number)
            assert seen[0] != seen[1]
            assert await _exchange(*old) == b"k"  # the connection opened before the renewal still works
            assert await _exchange(*new) == b"k"
            with pytest.raises(PeerIdentityMismatch):
                await connect("127.0.0.1", port, client_id, ORDERS)  # it is payments, not orders
            for _, writer in (old, new):
                writer.close()
            server.close()
            await server.wait_closed()
            await server_id.close()
            await client_id.close()

    asyncio.run(body())


def _peer_der(writer: asyncio.StreamWriter) -> bytes:
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    assert der is not None
    return bytes(der)


def test_state_changes_reach_on_state(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_ca(tmp_path / "ca") as ca:
            assert ca.parts is not None
            workload = identity(ca, tmp_path / "w", await token_for(ca, ORDERS))
            states: list[MeshState] = []
            quarantined = asyncio.Event()

            def record(state: MeshState) -> None:
                states.append(state)
                if "payments" in state.quarantined:
                    quarantined.set()

            workload.on_state(record)
            await workload.start()
            await ca.parts.state.quarantine("payments", "test")
            await asyncio.wait_for(quarantined.wait(), 10)
            assert states[-1].version > states[0].version
            await workload.close()

    asyncio.run(body())


def test_from_files_is_a_static_identity(tmp_path: Path) -> None:
    async def body() -> Callable[[], None]:
        async with running_ca(tmp_path / "ca") as ca:
            assert ca.parts is not None
            joined = identity(ca, tmp_path / "w", await token_for(ca, ORDERS), follow_state=False)
            await joined.start()
            await joined.close()
        # identity.pem holds the chain and the key together; from_files takes them apart.
        saved = (tmp_path / "w" / "identity.pem").read_bytes()
        key = serialization.load_pem_private_key(saved, password=None)
        (tmp_path / "cert.pem").write_bytes(pem(*x509.load_pem_x509_certificates(saved)))
        (tmp_path / "key.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        static = WorkloadIdentity.from_files(
            tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "w" / "bundle.pem"
        )
        assert static.spiffe_id == ORDERS
        assert static.client_context().check_hostname is False
        await static.start()  # nothing to do
        await static.close()
        return lambda: None

    asyncio.run(body())


def test_a_refused_renewal_backs_off_and_is_logged_once(tmp_path: Path) -> None:
    """A revoked workload's renewals are refused: the retries wait twice as long each time (jitter
    0 here: half of each step), and the trouble is logged once, not at every retry."""
    lines = io.StringIO()

    async def body() -> list[float]:
        async with running_ca(tmp_path / "ca") as ca:
            assert ca.parts is not None
            delays: list[float] = []
            done = asyncio.Event()

            async def sleep(delay: float) -> None:
                delays.append(delay)
                if len(delays) >= 6:
                    done.set()
                    await asyncio.Event().wait()  # park the loop: the test has what it needs

            workload = identity(
                ca,
                tmp_path / "w",
                await token_for(ca, ORDERS),
                sleep=sleep,
                jitter=lambda: 0.0,
                follow_state=False,
            )
            await workload.start()
            await ca.parts.state.revoke(ORDERS, "test")
            await asyncio.wait_for(done.wait(), 60)
            await workload.close()
            return delays

    log.configure("test", lines)
    try:
        delays = asyncio.run(body())
    finally:
        log.configure("garrison", sys.stderr)
    retries = delays[1:]  # the first is the wait until half-life
    assert retries == [0.5, 1.0, 2.0, 4.0, 8.0]
    events = [json.loads(line) for line in lines.getvalue().splitlines()]
    failed = [event for event in events if event["event"] == "workload.renewal_failed"]
    assert len(failed) == 1
    assert failed[0]["trouble"] == "refused"


def test_retry_delays_are_capped_and_never_outlast_the_certificate() -> None:
    workload = WorkloadIdentity("", Path("/nonexistent"), jitter=lambda: 0.999)
    assert workload._retry_delay(20, 10_000.0) == pytest.approx(RENEW_RETRY_MAX, rel=0.01)
    assert workload._retry_delay(20, 50.0) == 5.0  # a tenth of what is left
    assert WorkloadIdentity("", Path("/x"), jitter=lambda: 0.0)._retry_delay(3, 10_000.0) == 4.0
