"""Active health checks against real asyncio servers on 127.0.0.1 (plain and TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from garrison.proxy.upstream.circuit import CircuitBreaker
from garrison.proxy.upstream.health import ActiveHealthChecker, HealthCheckSpec
from garrison.proxy.upstream.target import Target

RESPONSES = {
    "ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    "no_content": b"HTTP/1.1 204 No Content\r\n\r\n",
    "fail": b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
    "redirect": b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
    "garbage": b"HTTP/1.1 2OO OK\r\n\r\n",
    "smuggle": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok",
    "status_only": b"HTTP/1.1 200 OK\r\n",  # then EOF: never a complete head
}

FAST = HealthCheckSpec(
    path="/healthz", interval=0.05, timeout=0.2, healthy_threshold=2, unhealthy_threshold=3
)


class HealthServer:
    """Answers each request per `mode`: a key of RESPONSES, or "hang" (never answers)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.mode = "ok"
        self.requests: list[bytes] = []
        self.sent: list[str] = []
        self.port = 0
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> HealthServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    def target(self, scheme: str = "http") -> Target:
        return Target.from_url(f"{scheme}://127.0.0.1:{self.port}", CircuitBreaker())

    def trailing(self, mode: str) -> int:
        """How many of the latest responses were `mode` in a row."""
        count = 0
        for sent in reversed(self.sent):
            if sent != mode:
                break
            count += 1
        return count

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            mode = self.mode
            if mode == "hang":
                await reader.read()  # until the prober gives up and drops the connection
                return
            self.sent.append(mode)
            writer.write(RESPONSES[mode])
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._handlers.discard(task)


async def wait_until(predicate: Callable[[], bool], timeout: float = 1.5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(coro(), timeout=3.0)

    asyncio.run(main())


# --- probe ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "healthy"),
    [
        ("ok", True),
        ("no_content", True),
        ("fail", False),
        ("redirect", False),
        ("garbage", False),
        ("smuggle", False),
        ("status_only", False),
    ],
)
@pytest.mark.process
def test_probe_status(mode: str, healthy: bool) -> None:
    async def main() -> None:
        async with HealthServer() as server:
            server.mode = mode
            checker = ActiveHealthChecker([], FAST)
            assert await checker.probe(server.target()) is healthy

    run(main)


@pytest.mark.process
def test_probe_request_shape() -> None:
    async def main() -> None:
        async with HealthServer() as server:
            spec = HealthCheckSpec(path="/ready%20z?full=1")
            assert await ActiveHealthChecker([], spec).probe(server.target())
            (head,) = server.requests
            lines = head.split(b"\r\n")
            assert lines[0] == b"GET /ready%20z?full=1 HTTP/1.1"
            assert f"Host: 127.0.0.1:{server.port}".encode() in lines
            assert b"Connection: close" in lines

    run(main)


@pytest.mark.process
def test_probe_times_out_on_hang() -> None:
    async def main() -> None:
        async with HealthServer() as server:
            server.mode = "hang"
            started = time.monotonic()
            assert not await ActiveHealthChecker([], FAST).probe(server.target())
            assert 0.15 < time.monotonic() - started < 0.6

    run(main)


def test_probe_connection_refused(refused_port: int) -> None:
    async def main() -> None:
        target = Target.from_url(f"http://127.0.0.1:{refused_port}", CircuitBreaker())
        assert not await ActiveHealthChecker([], FAST).probe(target)

    run(main)


# --- TLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "garrison-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.mark.process
def test_probe_https(tls_files: tuple[Path, Path]) -> None:
    cert_path, key_path = tls_files
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_path, key_path)
    trusting = ssl.create_default_context(cafile=str(cert_path))

    async def main() -> None:
        async with HealthServer(server_ctx) as server:
            target = server.target("https")
            assert await ActiveHealthChecker([], FAST, ssl_context=trusting).probe(target)
            # The default context does not trust the self-signed certificate: fail closed.
            assert not await ActiveHealthChecker([], FAST).probe(target)
            server.mode = "fail"
            assert not await ActiveHealthChecker([], FAST, ssl_context=trusting).probe(target)

    run(main)


# --- checker --------------------------------------------------------------------------------------


@pytest.mark.process
def test_thresholds_flip_health() -> None:
    async def main() -> None:
        async with HealthServer() as server:
            target = server.target()
            changes: list[tuple[bool, int]] = []

            def on_change(changed: Target, healthy: bool) -> None:
                assert changed is target and changed.healthy is healthy
                changes.append((healthy, server.trailing("fail" if not healthy else "ok")))

            checker = ActiveHealthChecker([target], FAST, on_change=on_change)
            checker.start()
            try:
                await wait_until(lambda: len(server.sent) >= 3)
                assert target.healthy and changes == []

                server.mode = "fail"
                await wait_until(lambda: not target.healthy)
                assert changes == [(False, 3)]  # exactly unhealthy_threshold failures

                server.mode = "ok"
                await wait_until(lambda: target.healthy)
                assert changes == [(False, 3), (True, 2)]  # exactly healthy_threshold successes
            finally:
                await checker.stop()

    run(main)


@pytest.mark.process
def test_isolated_failures_do_not_flap() -> None:
    async def main() -> None:
        async with HealthServer() as server:
            target = server.target()
            changes: list[bool] = []
            checker = ActiveHealthChecker([target], FAST, on_change=lambda _t, h: changes.append(h))
            checker.start()
            try:
                for _ in range(3):  # fail, fail, ok: never three in a row
                    for mode in ("fail", "fail", "ok"):
                        server.mode = mode
                        sent = len(server.sent)
                        await wait_until(lambda sent=sent: len(server.sent) > sent)  # type: ignore[misc]
                assert changes == [] and target.healthy
            finally:
                await checker.stop()

    run(main)


@pytest.mark.process
def test_hanging_target_goes_unhealthy_and_others_unaffected() -> None:
    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            servers = [await stack.enter_async_context(HealthServer()) for _ in range(4)]
            good = servers[1]
            for server in (servers[0], servers[2], servers[3]):
                server.mode = "hang"
            targets = [server.target() for server in servers]
            spec = HealthCheckSpec(interval=0.05, timeout=0.1, unhealthy_threshold=3)
            checker = ActiveHealthChecker(targets, spec)
            started = time.monotonic()
            checker.start()
            try:
                await wait_until(lambda: not any(targets[i].healthy for i in (0, 2, 3)))
                # Probes of one round run concurrently: ~3 timeouts (0.3 s), not 9.
                assert time.monotonic() - started < 0.7
                assert targets[1].healthy
                assert len(good.sent) >= 3
            finally:
                await checker.stop()

    run(main)


@pytest.mark.process
def test_stop_ends_probing_and_closes_connections() -> None:
    async def main() -> None:
        async with HealthServer() as server:
            server.mode = "hang"
            checker = ActiveHealthChecker([server.target()], HealthCheckSpec(interval=0.05, timeout=1.0))
            checker.start()
            with pytest.raises(RuntimeError):
                checker.start()
            await wait_until(lambda: len(server.requests) == 1)
            started = time.monotonic()
            await checker.stop()  # cancels the probe stuck waiting on the hanging server
            assert time.monotonic() - started < 0.2
            await wait_until(lambda: not server._handlers)  # the server saw the connection close
            seen = len(server.requests)
            await asyncio.sleep(0.15)
            assert len(server.requests) == seen
            await checker.stop()  # idempotent

    run(main)


@pytest.mark.process
def test_failing_callback_does_not_stop_checks() -> None:
    async def main() -> None:
        async with HealthServer() as server:
            server.mode = "fail"
            target = server.target()

            def on_change(_target: Target, _healthy: bool) -> None:
                raise RuntimeError("metrics exploded")

            spec = HealthCheckSpec(interval=0.05, timeout=0.2, healthy_threshold=1, unhealthy_threshold=1)
            checker = ActiveHealthChecker([target], spec, on_change=on_change)
            checker.start()
            try:
                await wait_until(lambda: not target.healthy)
                server.mode = "ok"
                await wait_until(lambda: target.healthy)
            finally:
                await checker.stop()

    run(main)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"path": "health"},
        {"path": "/a b"},
        {"path": "/x\r\nHost: evil"},
        {"path": "/é"},
        {"interval": 0.0},
        {"timeout": -1.0},
        {"healthy_threshold": 0},
        {"unhealthy_threshold": 0},
    ],
)
def test_spec_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        HealthCheckSpec(**kwargs)  # type: ignore[arg-type]
