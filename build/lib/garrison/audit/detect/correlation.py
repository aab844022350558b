"""The correlation rules: patterns across events, counted per key over sliding windows.

Each rule looks at the event types it names (``types``) and answers a ``Hit`` when its threshold
is reached. The detector routes events by type, so an event reaches only the rules that read it
(most events are ``http.request``, and only ``scanning`` and the Sigma rules read those).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from garrison.audit.detect.baseline import Baseline
from garrison.audit.detect.settings import RuleSettings
from garrison.audit.detect.windows import DistinctWindow, SlidingWindow
from garrison.audit.pipeline import LoggedEvent
from garrison.events.schema import Actor

__all__ = ["CorrelationRule", "Hit", "build_rules"]

SCAN_STATUSES = frozenset({401, 403, 404})


@dataclass(frozen=True, slots=True)
class Hit:
    settings: RuleSettings
    actor: Actor
    entries: list[LoggedEvent]
    summary: str


def actor_key(actor: Actor) -> str:
    """``ip:...``, ``subject:...``, ``client:...`` or ``service:...``: how suppressions name actors."""
    for kind in ("ip", "subject", "client", "service"):
        value = getattr(actor, kind)
        if value:
            return f"{kind}:{value}"
    return "unknown"


# (settings, entry) -> the actor it is counted for (None: not this rule's event), and a description.
KeyOf = Callable[[LoggedEvent], Actor | None]


class CorrelationRule:
    """Counts matching events per actor; a ``Hit`` once ``threshold`` fall within ``window``."""

    def __init__(self, settings: RuleSettings, types: tuple[str, ...], key: KeyOf, max_keys: int) -> None:
        self.settings = settings
        self.types = types
        self.key = key
        self.window = SlidingWindow(settings.threshold, settings.window, max_keys)

    def observe(self, entry: LoggedEvent) -> Hit | None:
        actor = self.key(entry)
        if actor is None:
            return None
        name = actor_key(actor)
        entries = self.window.hit(name, entry)
        if entries is None:
            return None
        s = self.settings
        return Hit(s, actor, entries, f"{len(entries)} {s.description} ({name}) within {s.window:g}s")


class DistinctRule(CorrelationRule):
    """Counts distinct values (accounts) per actor (an address)."""

    def __init__(
        self,
        settings: RuleSettings,
        types: tuple[str, ...],
        key: KeyOf,
        value: Callable[[LoggedEvent], str | None],
        max_keys: int,
    ) -> None:
        super().__init__(settings, types, key, max_keys)
        self.value = value
        self.distinct = DistinctWindow(settings.threshold, settings.window, max_keys)

    def observe(self, entry: LoggedEvent) -> Hit | None:
        actor, value = self.key(entry), self.value(entry)
        if actor is None or value is None:
            return None
        name = actor_key(actor)
        entries = self.distinct.hit(name, value, entry)
        if entries is None:
            return None
        s = self.settings
        return Hit(s, actor, entries, f"{len(entries)} {s.description} ({name}) within {s.window:g}s")


class NewEdgeRule(CorrelationRule):
    """A caller -> callee pair outside the learned baseline: one alert per new pair."""

    def __init__(self, settings: RuleSettings, baseline: Baseline) -> None:
        super().__init__(settings, ("mesh.edge", "mesh.call"), lambda e: None, 1)
        self.baseline = baseline

    def observe(self, entry: LoggedEvent) -> Hit | None:
        event = entry.event
        if event.outcome != "success" or not event.actor.service or not event.target:
            return None
        if not self.baseline.observe(event.actor.service, event.target, event.time):
            return None
        summary = f"new service-to-service call {event.actor.service} -> {event.target} (not in the baseline)"
        return Hit(self.settings, Actor(service=event.actor.service), [entry], summary)


def _failure(entry: LoggedEvent) -> bool:
    return entry.event.outcome in ("failure", "denied")


def _subject(entry: LoggedEvent) -> Actor | None:
    subject = entry.event.actor.subject
    return Actor(subject=subject) if subject and _failure(entry) else None


def _ip(entry: LoggedEvent) -> Actor | None:
    ip = entry.event.actor.ip
    return Actor(ip=ip) if ip and _failure(entry) else None


def _reuser(entry: LoggedEvent) -> Actor | None:
    a = entry.event.actor
    return Actor(subject=a.subject) if a.subject else (Actor(client=a.client) if a.client else a)


def _revoked(entry: LoggedEvent) -> Actor | None:
    if entry.event.details.get("reason") != "revoked":
        return None
    a = entry.event.actor
    return Actor(subject=a.subject) if a.subject else Actor(ip=a.ip) if a.ip else Actor(client=a.client)


def _scan(entry: LoggedEvent) -> Actor | None:
    ip = entry.event.actor.ip
    return Actor(ip=ip) if ip and entry.event.details.get("status") in SCAN_STATUSES else None


def _denied_service(entry: LoggedEvent) -> Actor | None:
    service = entry.event.actor.service
    return Actor(service=service) if service and entry.event.outcome == "denied" else None


def _denied_caller(entry: LoggedEvent) -> Actor | None:
    if entry.event.outcome != "denied":
        return None
    a = entry.event.actor
    if a.subject:
        return Actor(subject=a.subject)
    return Actor(service=a.service) if a.service else Actor(ip=a.ip) if a.ip else None


def build_rules(
    settings: dict[str, RuleSettings], baseline: Baseline, max_keys: int
) -> list[CorrelationRule]:
    """The enabled correlation rules, each with the event types it reads."""
    s = settings
    rules: list[CorrelationRule] = [
        CorrelationRule(s["brute_force_account"], ("auth.login",), _subject, max_keys),
        CorrelationRule(s["brute_force_ip"], ("auth.login",), _ip, max_keys),
        DistinctRule(s["credential_stuffing"], ("auth.login",), _ip, _failed_subject, max_keys),
        CorrelationRule(s["mfa_failures"], ("auth.mfa",), _subject, max_keys),
        CorrelationRule(s["token_reuse"], ("token.reuse",), _reuser, max_keys),
        CorrelationRule(s["revoked_token_use"], ("token.rejected",), _revoked, max_keys),
        CorrelationRule(s["scanning"], ("http.request",), _scan, max_keys),
        CorrelationRule(s["lateral_movement"], ("mesh.call",), _denied_service, max_keys),
        CorrelationRule(
            s["secret_denied"],
            ("secret.read", "secret.write", "secret.delete", "secret.list"),
            _denied_caller,
            max_keys,
        ),
        NewEdgeRule(s["new_service_edge"], baseline),
    ]
    return [rule for rule in rules if rule.settings.enabled]


def _failed_subject(entry: LoggedEvent) -> str | None:
    return entry.event.actor.subject if _failure(entry) else None
