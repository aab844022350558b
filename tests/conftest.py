"""Shared fixtures: a recording upstream and real gateway processes (see tests/helpers/gateway_harness.py),
PostgreSQL and Redis, and ``backend`` for tests on the SQL store (see tests/helpers/db_backend.py).

It also marks ``process`` every test that starts a real process or listener, or needs PostgreSQL or Redis
(``make unit`` runs the others: ``-m "not process"``), by the fixtures it uses, by its directory, or by an
explicit mark; a ``-m "not process"`` run is guarded by tests/helpers/unit_guard.py so that a test that
starts a process or a listener without the mark fails.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))

from db_backend import backend  # noqa: F401  (the fixture: SQLite, or a fresh PostgreSQL schema per test)
from gateway_harness import (
    GatewayProcess,
    RecordingUpstream,
    base_config,
    deep_merge,
)
from ports import refused_port as _refused_port
from ports import reserved_port
from unit_guard import UnitGuard, wanted

GatewayFactory = Callable[..., GatewayProcess]

# Fixtures that start a process or a listener, or reach a service: a test using one is a process test.
PROCESS_FIXTURES = frozenset(
    {
        "upstream",
        "module_upstream",
        "gateway_factory",
        "module_gateway_factory",
        "gateway",
        "held_port",
        "redis_url",
        "postgres_url",
    }
)
# Directories whose tests all drive real processes.
PROCESS_DIRECTORIES = ("e2e",)
TESTS = Path(__file__).parent


def _is_process_test(item: pytest.Item) -> bool:
    if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "postgresql" in callspec.params.values():
        return True  # the PostgreSQL run of ``backend`` or of a module's provider fixture
    parts = item.path.relative_to(TESTS).parts
    return parts[0] in PROCESS_DIRECTORIES


def pytest_configure(config: pytest.Config) -> None:
    if wanted(config):
        config.pluginmanager.register(UnitGuard(), "garrison-unit-guard")


@pytest.hookimpl(tryfirst=True)  # before ``-m`` selects by the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _is_process_test(item):
            item.add_marker(pytest.mark.process)


class _Gateways:
    """Starts gateways in numbered directories under ``root`` and stops them all at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[GatewayProcess] = []

    def __call__(
        self,
        upstream: RecordingUpstream | None = None,
        overrides: dict[str, Any] | None = None,
        *,
        upstream_port: int | None = None,
    ) -> GatewayProcess:
        """A running gateway for ``base_config`` deep-merged with ``overrides`` (lists are replaced)."""
        port = upstream.port if upstream is not None else upstream_port
        assert port, "give an upstream or an upstream_port"
        directory = self.root / f"gw{len(self.started)}"
        config = deep_merge(base_config(directory, port), overrides or {})
        gateway = GatewayProcess(directory, config)
        self.started.append(gateway)
        return gateway.start()

    def stop_all(self) -> None:
        for gateway in self.started:
            gateway.stop()


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def module_upstream() -> Iterator[RecordingUpstream]:
    """One recording upstream for a whole module; call ``reset()`` between tests."""
    server = RecordingUpstream().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[GatewayFactory]:
    gateways = _Gateways(tmp_path)
    try:
        yield gateways
    finally:
        gateways.stop_all()


@pytest.fixture(scope="module")
def module_gateway_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayFactory]:
    gateways = _Gateways(tmp_path_factory.mktemp("gateway"))
    try:
        yield gateways
    finally:
        gateways.stop_all()


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port held for this test (``ports.reserved_port``), for a server that has to be told a
    concrete port in its configuration, e.g. so that the CLI finds ``gateway.admin.listen``."""
    with reserved_port() as port:
        yield port


@pytest.fixture(name="refused_port")
def refused_port_fixture() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test (``ports.refused_port``)."""
    with _refused_port() as port:
        yield port


@pytest.fixture
def gateway(gateway_factory: GatewayFactory, upstream: RecordingUpstream) -> GatewayProcess:
    """A gateway with the default test config in front of ``upstream``."""
    return gateway_factory(upstream)


# -- real services: PostgreSQL and Redis ----------------------------------------------------------------


def _service_url(variable: str, what: str) -> str:
    """The URL of a real service for tests, or skip (fail under CI=true) when it is not there."""
    import os
    import socket
    from urllib.parse import urlsplit

    url = os.environ.get(variable)
    in_ci = os.environ.get("CI") == "true"
    if not url:
        message = f"{variable} is not set: no {what} to test against"
        if in_ci:
            pytest.fail(message + " (CI must run these tests)")
        pytest.skip(message)
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=2).close()
    except OSError as exc:
        message = f"{what} at {parts.hostname}:{parts.port} is unreachable ({exc.strerror})"
        if in_ci:
            pytest.fail(message + " (CI must run these tests)")
        pytest.skip(message)
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """``GARRISON_TEST_REDIS_URL`` (the Makefile sets it); tests get a database of their own via flushdb."""
    return _service_url("GARRISON_TEST_REDIS_URL", "Redis")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """``GARRISON_TEST_POSTGRES_URL`` (the Makefile sets it)."""
    return _service_url("GARRISON_TEST_POSTGRES_URL", "PostgreSQL")
