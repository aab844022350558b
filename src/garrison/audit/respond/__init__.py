"""Automated responses: the collector's ``Responder`` (audit/pipeline.py) through the components'
authenticated admin APIs — block an IP at every gateway, revoke a user's or client's token families,
quarantine a service, lock an account — with an expiry, a dry run, and an `audit.response` trail.

``responder_for(config, config_dir, appender, registry)`` builds one from garrison.yaml; the
collector calls ``await start()``, then ``respond(alert)`` per alert, and ``await stop()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from garrison.audit.pipeline import Appender
from garrison.audit.respond.responder import AdminResponder
from garrison.audit.respond.targets import targets_for
from garrison.config.assembly import GarrisonConfig
from garrison.config.audit_responses import ResponsesConfig

__all__ = ["AdminResponder", "responder_for"]


def responder_for(
    config: GarrisonConfig,
    config_dir: Path,
    appender: Appender,
    registry: CollectorRegistry | None = None,
    instance: str = "",
    clock: Callable[[], float] = time.time,
) -> AdminResponder:
    """The responder ``audit.responses`` describes. ``config_dir``: the config file's directory
    (admin TLS certificate paths are relative to it); ``clock``: epoch seconds, for
    expiries (tests move it)."""
    settings = config.audit.responses if config.audit is not None else ResponsesConfig()
    targets = targets_for(config, config_dir)
    return AdminResponder(
        settings, targets, config.trust_domain, appender, config.state_dir, registry, instance, clock
    )
