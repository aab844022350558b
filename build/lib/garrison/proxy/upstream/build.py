"""An ``UpstreamService`` from a ``services.<name>`` entry: its targets, breakers, pools, retries.

Shared by the gateway (a service per ``services`` entry) and the mesh sidecar (its app, and a service
per peer sidecar, whose settings come from the peer's own ``services`` entry): one construction, so a
service's timeouts, retries and breaker mean the same whichever proxy calls it. ``targets`` overrides
the entry's targets (the sidecar's ``app``, a peer sidecar's ``address``); ``upstream_tls`` is each
https pool's TLS context. With ``tls_source`` and ``expected_peer`` every target is a mesh sidecar
(the gateway's services behind one): dialled with the context ``tls_source`` returns at each new
connection, and required to present exactly ``expected_peer``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from garrison.config.shapes import ServiceShape
from garrison.proxy.upstream.balancer import make_balancer
from garrison.proxy.upstream.circuit import CircuitBreaker, CircuitState
from garrison.proxy.upstream.health import ActiveHealthChecker, HealthCheckSpec
from garrison.proxy.upstream.pool import TargetPool
from garrison.proxy.upstream.retry import RetryBudget
from garrison.proxy.upstream.service import UpstreamService
from garrison.proxy.upstream.target import Target
from garrison.telemetry import logging as log

__all__ = ["build_service"]


def build_service(
    name: str,
    spec: ServiceShape,
    loop: asyncio.AbstractEventLoop,
    upstream_tls: ssl.SSLContext | None,
    *,
    component: str,
    targets: list[str] | None = None,
    health_checks: bool = True,
    tls_source: Callable[[], ssl.SSLContext] | None = None,
    expected_peer: str | None = None,
) -> UpstreamService:
    """``component`` prefixes the log events (``gateway.circuit.changed``)."""
    built: list[Target] = []
    for url in targets if targets is not None else spec.targets:
        breaker = CircuitBreaker(
            consecutive_failures=spec.circuit_breaker.consecutive_failures,
            open_for=spec.circuit_breaker.open_for,
            half_open_probes=spec.circuit_breaker.half_open_probes,
            on_change=_log_circuit(component, name, url),
        )
        built.append(Target.from_url(url, breaker))
    pools = {
        target: TargetPool(
            target,
            loop,
            max_idle=spec.pool.max_idle,
            idle_timeout=spec.pool.idle_timeout,
            connect_timeout=spec.connect_timeout,
            ssl_context=upstream_tls if target.scheme == "https" else None,
            tls_source=tls_source,
            expected_peer=expected_peer,
        )
        for target in built
    }
    health = None
    if spec.health_check is not None and health_checks:
        check = spec.health_check
        health = ActiveHealthChecker(
            built,
            HealthCheckSpec(
                path=check.path,
                interval=check.interval,
                timeout=check.timeout,
                healthy_threshold=check.healthy_threshold,
                unhealthy_threshold=check.unhealthy_threshold,
            ),
            on_change=lambda target, healthy: log.log(
                f"{component}.health.changed", service=name, target=target.url, healthy=healthy
            ),
            ssl_context=upstream_tls,
        )
    return UpstreamService(
        name=name,
        targets=built,
        pools=pools,
        balancer=make_balancer(spec.balancer),
        budget=RetryBudget(spec.retries.budget_ratio, spec.retries.min_per_second),
        retry_attempts=spec.retries.attempts,
        read_timeout=spec.read_timeout,
        health=health,
    )


def _log_circuit(component: str, service: str, url: str) -> Callable[[CircuitState], None]:
    def changed(state: CircuitState) -> None:
        log.log(f"{component}.circuit.changed", service=service, target=url, state=state.value)

    return changed
