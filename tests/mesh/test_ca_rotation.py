"""Rotation without an outage: two workloads renew and do mutual-TLS handshakes with each other in a
loop while the CA's intermediate, then its root (add -> activate -> retire), are rotated. Not one
handshake may fail: every workload learns of a new root (the /v1/state push) before anything is issued
under it, and the old root leaves the bundle only once nothing in use chains to it."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from ca_harness import GARRISON, CaProcess
from cryptography import x509

from garrison.pki.workload import WorkloadIdentity, connect, require_spiffe_id

pytestmark = pytest.mark.process  # real CA processes (or an in-process CA) and TLS listeners

ORDERS = "spiffe://shop.local/svc/orders"
PAYMENTS = "spiffe://shop.local/svc/payments"
MAX_ROUNDS = 20_000  # a bound, so a rotation that never completes fails instead of hanging


class Peer:
    """A workload identity serving mTLS: it answers one byte to a peer with the expected SPIFFE ID."""

    def __init__(self, identity: WorkloadIdentity, accepts: str) -> None:
        self.identity = identity
        self.accepts = accepts
        self.server: asyncio.Server | None = None
        self.port = 0

    async def serve(self) -> None:
        self.server = await asyncio.start_server(
            self._answer, "127.0.0.1", 0, ssl=self.identity.server_context()
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            require_spiffe_id(writer.get_extra_info("ssl_object"), self.accepts)
            await reader.readexactly(1)
            writer.write(b"k")
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        await self.identity.close()


async def handshake(client: Peer, server: Peer) -> None:
    reader, writer = await connect("127.0.0.1", server.port, client.identity, server.identity.spiffe_id)
    try:
        writer.write(b"x")
        await writer.drain()
        assert await reader.readexactly(1) == b"k"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def bundle_size_event(identity: WorkloadIdentity, size: int) -> asyncio.Event:
    """Set once ``identity``'s contexts trust exactly ``size`` roots (its bundle file is rewritten first)."""
    event = asyncio.Event()

    def check(*_: object) -> None:
        roots = x509.load_pem_x509_certificates((identity.directory / "bundle.pem").read_bytes())
        if len(roots) == size:
            event.set()

    identity.on_contexts(check)
    return event


async def cli(ca: CaProcess, *args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        str(GARRISON),
        *args,
        "-c",
        str(ca.config_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode == 0, err.decode()


def test_root_and_intermediate_rotation_with_zero_failed_handshakes(tmp_path: Path) -> None:
    ca = CaProcess(tmp_path / "ca").init().start()
    try:
        asyncio.run(_rotate(ca, tmp_path))
    finally:
        ca.stop()


async def _rotate(ca: CaProcess, tmp_path: Path) -> None:
    peers = []
    for service, other in (("orders", PAYMENTS), ("payments", ORDERS)):
        identity = WorkloadIdentity(
            ca.url, tmp_path / service, ca_bundle=ca.bundle_file, join_token=ca.join_token(service)
        )
        await identity.start()
        peers.append(Peer(identity, other))
    orders, payments = peers
    for peer in peers:
        await peer.serve()
    failures: list[str] = []
    rounds = 0
    done = asyncio.Event()

    async def loop() -> None:
        nonlocal rounds
        while not done.is_set() and rounds < MAX_ROUNDS:
            for client, server in ((orders, payments), (payments, orders)):
                try:
                    await handshake(client, server)
                except Exception as exc:  # every failure is counted, whatever it is
                    failures.append(f"{type(exc).__name__}: {exc}")
            rounds += 1

    async def renew_both() -> None:
        await orders.identity.renew()
        await asyncio.sleep(0)  # let a handshake run between the two renewals (one old, one new)
        await payments.identity.renew()

    looping = asyncio.create_task(loop())
    try:
        await cli(ca, "ca", "rotate", "intermediate")
        await renew_both()
        two_roots = [bundle_size_event(peer.identity, 2) for peer in peers]
        await cli(ca, "ca", "rotate", "root", "add")
        for event in two_roots:
            await asyncio.wait_for(event.wait(), 10)
        await renew_both()
        await cli(ca, "ca", "rotate", "root", "activate")
        await renew_both()
        one_root = [bundle_size_event(peer.identity, 1) for peer in peers]
        await cli(ca, "ca", "rotate", "root", "retire")
        for event in one_root:
            await asyncio.wait_for(event.wait(), 10)
        await renew_both()  # the CA now verifies renewals under the new root only
        settled = rounds
        while rounds < settled + 20:
            await asyncio.sleep(0)
    finally:
        done.set()
        await looping
        for peer in peers:
            await peer.close()
    assert failures == []
    assert rounds > 20
    chain = x509.load_pem_x509_certificates((tmp_path / "orders" / "identity.pem").read_bytes())
    (root,) = x509.load_pem_x509_certificates((tmp_path / "orders" / "bundle.pem").read_bytes())
    assert chain[1].issuer == root.subject  # issued under the new root
