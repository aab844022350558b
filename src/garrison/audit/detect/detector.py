"""The collector's detection stage: every durable batch, in log order, through every rule.

Runs on each batch as it is committed (no timer), so an alert follows its triggering event by one
batch. Events are routed by type to the rules that read them; gateway requests go in one batch to
the Sigma matcher (nothing else reaches it). Alerts of a batch are appended in one call (durable
before anything acts on them), then handed to the responder as background tasks, so a slow
component's admin API never holds up detection. The collector's own events (``audit.*``) are
skipped: an alert never feeds the rules that raised it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from garrison.audit.detect.alerts import AlertGate, Counters
from garrison.audit.detect.baseline import Baseline
from garrison.audit.detect.correlation import CorrelationRule, Hit, build_rules
from garrison.audit.detect.metrics import DetectionMetrics
from garrison.audit.detect.settings import DEFAULTS, RuleSettings, settings_for
from garrison.audit.detect.sigma import BUILTIN_RULES, SigmaMatcher, SigmaSetupError, load_rules
from garrison.audit.detect.suppressions import Suppressions
from garrison.audit.detect.webfields import web_fields
from garrison.audit.pipeline import AlertRaised, Appender, LoggedEvent, Responder
from garrison.config.audit_detection import DetectionConfig
from garrison.events.schema import Actor, Event

if TYPE_CHECKING:
    from garrison.config.assembly import GarrisonConfig

__all__ = ["Detector"]

log = logging.getLogger(__name__)
MAX_RESPONSES_PENDING = 1000


class Detector:
    """An ``AfterCommit`` stage. ``state_dir`` is the collector's ``state_dir/audit`` (None: nothing
    persisted, for tests); ``now`` is the clock of suppressions and alert times."""

    def __init__(
        self,
        config: DetectionConfig,
        appender: Appender,
        responder: Responder | None = None,
        state_dir: Path | None = None,
        *,
        config_dir: Path | None = None,
        registry: CollectorRegistry | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.enabled = config.enabled
        self.appender = appender
        self.responder = responder
        self.now = now
        self.counters = Counters()
        self.suppressions = Suppressions(
            state_dir / "suppressions.json" if state_dir else None, config.max_suppressions, now
        )
        self.baseline = Baseline(
            state_dir / "baseline.json" if state_dir else None,
            config.baseline_learning,
            config.max_baseline_edges,
        )
        self.gate = AlertGate(self.suppressions, self.counters)
        settings = {name: settings_for(config, name) for name in DEFAULTS}
        self.rules = build_rules(settings, self.baseline, config.max_keys)
        self._routes: dict[str, list[CorrelationRule]] = {}
        for rule in self.rules:
            for kind in rule.types:
                self._routes.setdefault(kind, []).append(rule)
        self.sigma: SigmaMatcher | None = None
        self.sigma_settings: list[RuleSettings] = []
        if config.enabled:
            self.sigma, self.sigma_settings = _sigma(config, config_dir or Path.cwd())
        self._tasks: set[asyncio.Task[None]] = set()
        self._sigma_lock = asyncio.Lock()
        self.metrics = DetectionMetrics(self.counters)
        if registry is not None:
            registry.register(self.metrics)

    @classmethod
    def for_config(
        cls,
        config: GarrisonConfig,
        appender: Appender,
        responder: Responder | None = None,
        registry: CollectorRegistry | None = None,
    ) -> Detector:
        """The collector's detector: ``audit.detection``, state in ``state_dir/audit``. Raises
        SigmaSetupError (a ValueError naming the file) for a Sigma rule that cannot be loaded."""
        assert config.audit is not None
        return cls(config.audit.detection, appender, responder, config.state_dir / "audit", registry=registry)

    async def committed(self, entries: Sequence[LoggedEvent]) -> None:
        if not self.enabled:
            return
        try:
            await self._committed(entries)
        except Exception:  # the contract: never raise into the collector
            log.exception("detection failed on a batch of %d events", len(entries))

    async def _committed(self, entries: Sequence[LoggedEvent]) -> None:
        hits, web = self._hits(entries)
        if web:
            hits.extend(await self._sigma_hits(web))
        self.baseline.save()
        if not hits:
            return
        events: list[Event] = []
        raised: list[AlertRaised] = []
        wall = self.now()
        for hit in hits:
            admitted = self.gate.admit(hit, hit.entries[-1].event.time, wall)
            if admitted is not None:
                events.append(admitted[0])
                if admitted[1] is not None:
                    raised.append(admitted[1])
        if events:
            await self.appender(events)
        for alert in raised:
            self._respond(alert)

    def _hits(self, entries: Sequence[LoggedEvent]) -> tuple[list[Hit], list[LoggedEvent]]:
        """The correlation rules' hits, and the gateway requests for the Sigma matcher."""
        hits: list[Hit] = []
        routes = self._routes
        web: list[LoggedEvent] = []
        sigma = self.sigma is not None
        for entry in entries:
            event = entry.event
            kind = event.type
            if event.component == "audit":
                continue
            rules = routes.get(kind)
            if rules is not None:
                for rule in rules:
                    hit = rule.observe(entry)
                    if hit is not None:
                        hits.append(hit)
            if sigma and kind == "http.request":
                web.append(entry)
        return hits, web

    async def _sigma_hits(self, web: list[LoggedEvent]) -> list[Hit]:
        """Sigma verdicts for a batch's requests. SQLite runs in a worker thread: it releases the GIL
        while it evaluates, so the collector's loop keeps taking in events meanwhile."""
        assert self.sigma is not None
        rows = [web_fields(entry.event) for entry in web]
        async with self._sigma_lock:
            verdicts = await asyncio.to_thread(self.sigma.evaluate, rows)
        hits: list[Hit] = []
        for entry, row, verdict in zip(web, rows, verdicts, strict=True):
            for index in verdict:
                settings = self.sigma_settings[index]
                event = entry.event
                actor = Actor(ip=event.actor.ip) if event.actor.ip else event.actor
                target = str(row[2] or "")[:200]
                summary = (
                    f"{settings.description}: {row[0] or '-'} {target} from {event.actor.ip or 'unknown'}"
                )
                hits.append(Hit(settings, actor, [entry], summary))
        return hits

    def _respond(self, alert: AlertRaised) -> None:
        if self.responder is None:
            return
        if len(self._tasks) >= MAX_RESPONSES_PENDING:
            self.counters.suppress(alert.rule, "responder_busy")
            return
        task = asyncio.get_running_loop().create_task(self.responder.respond(alert))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for the responses in flight."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Wait for responses in flight, save the baseline, release the Sigma matcher."""
        await self.settle()
        self.baseline.save()
        if self.sigma is not None:
            self.sigma.close()


def _sigma(config: DetectionConfig, config_dir: Path) -> tuple[SigmaMatcher | None, list[RuleSettings]]:
    """The Sigma matcher over the enabled rules, and each rule's settings (same order)."""
    base = settings_for(config, "sigma:*")
    if not base.enabled and not any(k.startswith("sigma:") for k in config.rules):
        return None, []
    dirs = [BUILTIN_RULES] if config.sigma_builtin else []
    dirs += [Path(d) if Path(d).is_absolute() else config_dir / d for d in config.sigma_dirs]
    rules = load_rules(dirs) if dirs else []
    named = {f"sigma:{r.id}" for r, _ in rules}
    unknown = [k for k in config.rules if k.startswith("sigma:") and k not in named]
    if unknown:
        raise SigmaSetupError(
            f"audit.detection.rules names Sigma rules that are not loaded: {', '.join(unknown)}"
        )
    kept, settings = [], []
    for rule, source in rules:
        name = f"sigma:{rule.id}"
        level = rule.level.name.lower() if rule.level else "medium"
        severity = {"informational": "low"}.get(level, level)
        own = RuleSettings(name, True, 1, 600, severity, (), config.rate_limit, rule.title)
        effective = settings_for(config, name, own)
        if effective.enabled:
            kept.append((rule, source))
            settings.append(effective)
    if not kept:
        return None, []
    return SigmaMatcher(kept), settings
