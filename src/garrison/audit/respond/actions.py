"""What each response action sends, decided from an alert without I/O (tests drive it directly).

``plan(action, alert, settings, trust_domain)`` turns one named action into a ``Plan`` (the admin
call, its undo when the component cannot expire it by itself, its expiry) or a ``Skip`` (the actor
lacks what the action needs, the action is off, the address is on ``never_block``): a skip is an
answer, not an error.

| action | component | call | expiry |
|---|---|---|---|
| block_ip | every gateway | ``POST /blocklist?ip=&for=&reason=`` | the gateway's own (``for``) |
| revoke_tokens | identity | ``POST /token-families?subject=`` (or ``client_id=``) | none (final) |
| quarantine_service | CA | ``POST /quarantine?service=&reason=`` | the collector's ``DELETE`` at expiry |
| lock_account | identity | ``POST /lockouts?username=&for=&reason=`` | the provider's own (``for``) |
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from garrison.audit.pipeline import AlertRaised
from garrison.config.audit_responses import ResponseActionConfig, ResponsesConfig
from garrison.pki.authority import trust_domain_id, workload_id

__all__ = ["ACTIONS", "COMPONENT_OF", "Call", "Plan", "Skip", "action_settings", "plan"]

ACTIONS: Final = ("block_ip", "revoke_tokens", "quarantine_service", "lock_account")
Component = Literal["gateway", "identity", "ca"]
COMPONENT_OF: Final[dict[str, Component]] = {
    "block_ip": "gateway",
    "revoke_tokens": "identity",
    "quarantine_service": "ca",
    "lock_account": "identity",
}
MAX_REASON = 200


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    path: str
    params: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Plan:
    action: str
    target: str  # what it acts on: an address, a service, a username, "subject:U" / "client:C"
    component: Component
    do: Call
    seconds: float | None  # how long it lasts; None: it does not expire
    undo: Call | None = None  # sent by the collector at expiry; None: the component expires it
    probe: Call | None = None  # asked first: is it already in force (set by someone else)?
    loopback: bool = False

    def in_force(self, answer: Mapping[str, Any]) -> bool:
        """From the probe's answer: whether the target is already under this action."""
        listed = answer.get("quarantined")
        return isinstance(listed, list) and self.target in listed


@dataclass(frozen=True, slots=True)
class Skip:
    action: str
    reason: str
    target: str | None = None


def action_settings(settings: ResponsesConfig, action: str) -> ResponseActionConfig:
    value = getattr(settings, action)
    assert isinstance(value, ResponseActionConfig)
    return value


def plan(action: str, alert: AlertRaised, settings: ResponsesConfig, trust_domain: str) -> Plan | Skip:
    """The calls ``action`` makes for ``alert`` (see the module docstring)."""
    if action not in ACTIONS:
        return Skip(action, f"unknown action {action[:64]!r} (one of {', '.join(ACTIONS)})")
    if not action_settings(settings, action).enabled:
        return Skip(action, f"audit.responses.{action}.enabled is false")
    seconds = action_settings(settings, action).for_
    reason = f"garrison audit: rule {alert.rule} (alert {alert.alert_id})"[:MAX_REASON]
    if action == "block_ip":
        return _block_ip(alert, settings, seconds, reason)
    if action == "revoke_tokens":
        return _revoke_tokens(alert, reason)
    if action == "quarantine_service":
        return _quarantine(alert, trust_domain, seconds, reason)
    return _lock_account(alert, seconds, reason)


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def _block_ip(alert: AlertRaised, settings: ResponsesConfig, seconds: float, reason: str) -> Plan | Skip:
    if not alert.actor.ip:
        return Skip("block_ip", "the actor has no IP address")
    try:
        address = ipaddress.ip_address(alert.actor.ip)
    except ValueError:
        return Skip("block_ip", "the actor's IP is not an IP address", alert.actor.ip[:64])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    ip = str(address)
    for cidr in settings.never_block:
        if address in ipaddress.ip_network(cidr, strict=False):
            return Skip("block_ip", f"{ip} is in audit.responses.never_block ({cidr})", ip)
    call = Call("POST", "/blocklist", {"ip": ip, "for": _duration(seconds), "reason": reason})
    return Plan("block_ip", ip, "gateway", call, seconds, loopback=address.is_loopback)


def _revoke_tokens(alert: AlertRaised, reason: str) -> Plan | Skip:
    # The user's families when the actor is a user (a client's users are not all suspects);
    # the client's when the alert is about a client alone.
    if alert.actor.subject:
        key, value, kind = "subject", alert.actor.subject, "subject"
    elif alert.actor.client:
        key, value, kind = "client_id", alert.actor.client, "client"
    else:
        return Skip("revoke_tokens", "the actor has no subject or client")
    call = Call("POST", "/token-families", {key: value, "reason": reason})
    return Plan("revoke_tokens", f"{kind}:{value}", "identity", call, None)


def _quarantine(alert: AlertRaised, trust_domain: str, seconds: float, reason: str) -> Plan | Skip:
    service = _service_name(alert.actor.service, trust_domain)
    if isinstance(service, Skip):
        return service
    call = Call("POST", "/quarantine", {"service": service, "reason": reason})
    undo = Call("DELETE", "/quarantine", {"service": service})
    probe = Call("GET", "/quarantine", {})
    return Plan("quarantine_service", service, "ca", call, seconds, undo=undo, probe=probe)


def _service_name(actor_service: str | None, trust_domain: str) -> str | Skip:
    """A service name from ``actor.service``: a name, or a SPIFFE ID ``spiffe://<td>/svc/<name>``."""
    if not actor_service:
        return Skip("quarantine_service", "the actor has no service")
    name = actor_service
    if actor_service.startswith("spiffe://"):
        prefix = trust_domain_id(trust_domain) + "/svc/"
        if not actor_service.startswith(prefix):
            return Skip("quarantine_service", "the actor's SPIFFE ID is not a service of this trust domain")
        name = actor_service.removeprefix(prefix)
    try:
        workload_id(trust_domain, name)
    except ValueError:
        return Skip("quarantine_service", "the actor's service is not a valid service name")
    return name


def _lock_account(alert: AlertRaised, seconds: float, reason: str) -> Plan | Skip:
    if not alert.actor.subject:
        return Skip("lock_account", "the actor has no username (subject)")
    username = alert.actor.subject
    call = Call("POST", "/lockouts", {"username": username, "for": _duration(seconds), "reason": reason})
    return Plan("lock_account", username, "identity", call, seconds)
