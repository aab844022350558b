"""The collector's Responder: runs the responses an alert names, in the background, bounded.

``respond(alert)`` plans each action (actions.py, no I/O), records skips, and schedules the rest as
tasks; it returns at once, so detection never waits on an admin API. The bounds:

- at most ``max_active`` actions scheduled or running; beyond it an action is not run and the
  drops are recorded as ``busy`` (one event per action name per burst, with the count, so a flood
  of alerts cannot become a flood of events either);
- per action, at most ``concurrency`` calls at once (a semaphore);
- an action already in flight for the same target is not scheduled again (``skipped``);
- each admin call is tried ``attempts`` times with doubling back-off (client.py);
- at most ``max_pending_undos`` quarantines awaiting their undo (undo.py).

Expiry: the gateway and the identity provider expire blocks and lockouts themselves (the call
carries ``for``); a quarantine is lifted here, by the undo loop, at its expiry — including after a
restart, from the undo file. A quarantine already in force when the alert comes (an operator's, or
another system's) is left alone and never lifted by the collector (``in_force``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from garrison.audit.pipeline import AlertRaised, Appender
from garrison.audit.respond.actions import ACTIONS, Plan, Skip, action_settings, plan
from garrison.audit.respond.client import AdminCaller
from garrison.audit.respond.execute import Executor
from garrison.audit.respond.record import Recorder, ResponseMetrics, ResponseRecord
from garrison.audit.respond.targets import Targets
from garrison.audit.respond.undo import PendingUndo, UndoStore
from garrison.config.audit_responses import ResponsesConfig
from garrison.telemetry import logging as log

__all__ = ["AdminResponder"]

UNDO_FILE = "responses-undo.json"
MAX_UNDO_RETRY = 300.0  # seconds: the longest wait between two tries of a failing undo


class AdminResponder:
    """``Responder`` (audit/pipeline.py) through the components' admin APIs. ``start()`` before
    ``respond``; ``stop()`` at shutdown (pending undos stay on disk for the next start)."""

    def __init__(
        self,
        settings: ResponsesConfig,
        targets: Targets,
        trust_domain: str,
        appender: Appender,
        state_dir: Path,
        registry: CollectorRegistry | None = None,
        instance: str = "",
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.trust_domain = trust_domain
        self.clock = clock
        self.metrics = ResponseMetrics(registry)
        self.record = Recorder(appender, self.metrics, instance)
        self.undos = UndoStore(state_dir / "audit" / UNDO_FILE, settings.max_pending_undos)
        caller = AdminCaller(settings.attempts, settings.backoff, settings.timeout, sleep)
        self.executor = Executor(settings, targets, caller, self.undos, self.record, clock)
        self._limits = {
            name: asyncio.Semaphore(action_settings(settings, name).concurrency) for name in ACTIONS
        }
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight: set[tuple[str, str]] = set()
        self._busy: dict[str, tuple[AlertRaised, int]] = {}  # action -> (first alert, drops)
        self._busy_reporter: asyncio.Task[None] | None = None
        self._undo_wake = asyncio.Event()
        self._undo_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"AdminResponder(active={len(self._tasks)}, pending_undos={len(self.undos.entries)})"

    async def start(self) -> None:
        """Load the undos a previous run left, and start lifting them at their expiry."""
        pending = self.undos.load()
        if pending:
            log.log("audit.response.undos_loaded", count=len(pending))
        self.metrics.pending_undos.set(len(self.undos.entries))
        self._undo_task = asyncio.get_running_loop().create_task(self._undo_loop())

    async def stop(self) -> None:
        tasks = [*self._tasks, *(t for t in (self._undo_task, self._busy_reporter) if t is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.executor.caller.aclose()

    async def drain(self) -> None:
        """Wait until every scheduled action (not the undos to come) has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def respond(self, alert: AlertRaised) -> None:
        """Schedule the alert's responses and return (never raises, never waits on a component)."""
        try:
            for action in dict.fromkeys(alert.responses):
                self._schedule(alert, plan(action, alert, self.settings, self.trust_domain))
        except Exception as exc:  # a bug here must not take detection down
            log.error("audit.response.schedule_failed", rule=alert.rule, error=type(exc).__name__)

    def _schedule(self, alert: AlertRaised, planned: Plan | Skip) -> None:
        # The cap counts every task, the records of skips included: a flood of alerts stays bounded.
        if len(self._tasks) >= self.settings.max_active:
            self._note_busy(alert, planned.action)
            return
        if isinstance(planned, Skip):
            self._spawn(self.record(self._skipped(alert, planned.action, planned.target, planned.reason)))
            return
        key = (planned.action, planned.target)
        if key in self._in_flight:
            why = "the same action on the same target is already in progress"
            self._spawn(self.record(self._skipped(alert, planned.action, planned.target, why)))
            return
        self._in_flight.add(key)
        self._spawn(self._run(alert, planned))

    @staticmethod
    def _skipped(alert: AlertRaised, action: str, target: str | None, why: str) -> ResponseRecord:
        return ResponseRecord.for_alert(alert, action, "skipped", target=target, error=why)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(_quietly(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, alert: AlertRaised, planned: Plan) -> None:
        try:
            async with self._limits[planned.action]:
                await self.executor.run(alert, planned)
        finally:
            self._in_flight.discard((planned.action, planned.target))
            self.metrics.pending_undos.set(len(self.undos.entries))
            self._undo_wake.set()

    def _note_busy(self, alert: AlertRaised, action: str) -> None:
        """Count an action dropped at the cap (per action name: a bounded map); one reporter task
        records the counts once it runs."""
        action = action if action in ACTIONS else "other"
        self.metrics.responses.labels(action, "failure").inc()
        first, count = self._busy.get(action, (alert, 0))
        self._busy[action] = (first, count + 1)
        if self._busy_reporter is None or self._busy_reporter.done():
            self._busy_reporter = asyncio.get_running_loop().create_task(_quietly(self._report_busy()))

    async def _report_busy(self) -> None:
        while self._busy:
            action, (alert, count) = self._busy.popitem()
            error = (
                f"{count} action(s) not run: audit.responses.max_active ({self.settings.max_active}) reached"
            )
            record = ResponseRecord.for_alert(alert, action, "busy", error=error, extra={"dropped": count})
            await self.record(record, count=False)

    # -- undo at expiry ----------------------------------------------------------------------------

    async def _undo_loop(self) -> None:
        while True:
            self._undo_wake.clear()
            now = self.clock()
            due = [e for e in self.undos.entries.values() if e.until <= now]
            for entry in due:
                await self._undo(entry)
            upcoming = [e.until for e in self.undos.entries.values()]
            delay = (min(upcoming) - self.clock()) if upcoming else None
            if delay is not None and delay <= 0:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._undo_wake.wait(), delay)

    async def _undo(self, entry: PendingUndo) -> None:
        undone = await self.executor.undo(entry)
        if not undone:
            retry = min(MAX_UNDO_RETRY, self.settings.backoff * 2 ** min(entry.failures, 20))
            await self.undos.put(
                PendingUndo(
                    entry.action,
                    entry.target,
                    self.clock() + retry,
                    entry.alert_id,
                    entry.rule,
                    entry.failures + 1,
                )
            )
        self.metrics.pending_undos.set(len(self.undos.entries))


async def _quietly(work: Awaitable[None]) -> None:
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a background task's failure is logged, never lost
        log.error("audit.response.task_failed", error=f"{type(exc).__name__}: {exc}"[:300])
