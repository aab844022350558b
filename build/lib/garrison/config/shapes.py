"""Read-only shapes of the config sections that shared code reads: an admin listener, a service.

The pydantic models (``AdminConfig``, ``ServiceConfig``) have these shapes, and so do the plain
frozen dataclasses of a process that holds a compact, already validated copy of its configuration
instead of the models (the mesh sidecar: mesh/sidecar/settings.py, about 15 MB less resident). Code
shared by both (admin/, proxy/upstream/build.py) takes these shapes; mypy checks that both kinds
fit, so a field added to a model and read by shared code must be added to the copy too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = [
    "AdminShape",
    "AdminTlsShape",
    "CircuitBreakerShape",
    "HealthCheckShape",
    "PoolShape",
    "RetryShape",
    "ServiceShape",
]


class AdminTlsShape(Protocol):
    @property
    def cert(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def client_ca(self) -> str | None: ...


class AdminShape(Protocol):
    @property
    def listen(self) -> str: ...
    @property
    def tls(self) -> AdminTlsShape | None: ...
    @property
    def hosts(self) -> Sequence[str]: ...


class PoolShape(Protocol):
    @property
    def max_idle(self) -> int: ...
    @property
    def idle_timeout(self) -> float: ...


class RetryShape(Protocol):
    @property
    def attempts(self) -> int: ...
    @property
    def budget_ratio(self) -> float: ...
    @property
    def min_per_second(self) -> float: ...


class CircuitBreakerShape(Protocol):
    @property
    def consecutive_failures(self) -> int: ...
    @property
    def open_for(self) -> float: ...
    @property
    def half_open_probes(self) -> int: ...


class HealthCheckShape(Protocol):
    @property
    def path(self) -> str: ...
    @property
    def interval(self) -> float: ...
    @property
    def timeout(self) -> float: ...
    @property
    def healthy_threshold(self) -> int: ...
    @property
    def unhealthy_threshold(self) -> int: ...


class ServiceShape(Protocol):
    """What ``build_service`` reads of a ``services.<name>`` entry."""

    @property
    def targets(self) -> Sequence[str]: ...
    @property
    def balancer(self) -> str: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def read_timeout(self) -> float: ...
    @property
    def pool(self) -> PoolShape: ...
    @property
    def retries(self) -> RetryShape: ...
    @property
    def circuit_breaker(self) -> CircuitBreakerShape: ...
    @property
    def health_check(self) -> HealthCheckShape | None: ...
