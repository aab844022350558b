"""Running one planned action, or one undo, against its admin listeners, and recording what happened.

The responder (responder.py) decides when and how many; this module does one: dry run or call, every
gateway at once for a block (each replica holds its own list unless they share Redis), the
write-ahead undo entry before a quarantine, and the one `audit.response` record of the outcome.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

from garrison.audit.pipeline import AlertRaised
from garrison.audit.respond.actions import COMPONENT_OF, Plan, action_settings
from garrison.audit.respond.client import AdminCaller, CallResult
from garrison.audit.respond.record import Recorder, ResponseRecord
from garrison.audit.respond.targets import AdminTarget, Targets
from garrison.audit.respond.undo import PendingUndo, UndoStore, undo_call
from garrison.config.audit_responses import ResponsesConfig
from garrison.events.schema import Actor
from garrison.telemetry import logging as log

__all__ = ["Executor"]

# Counts some answers carry; copied into the record's details (JSON numbers only).
ANSWER_COUNTS = ("revoked_families", "revoked_tokens")
MISSING = {
    "gateway": "no gateway admin URL: set audit.responses.gateways (gateway.admin.listen is on port 0)",
    "identity": "no identity admin URL: configure identity, or set audit.responses.identity_admin "
    "(identity.admin.listen is on port 0)",
    "ca": "no mesh CA admin URL: configure mesh, or set audit.responses.ca_admin "
    "(mesh.ca.admin.listen is on port 0)",
}


class Executor:
    def __init__(
        self,
        settings: ResponsesConfig,
        targets: Targets,
        caller: AdminCaller,
        undos: UndoStore,
        record: Recorder,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.targets = targets
        self.caller = caller
        self.undos = undos
        self.record = record
        self.clock = clock

    def endpoints(self, component: str) -> tuple[AdminTarget, ...]:
        if component == "gateway":
            return self.targets.gateways
        one = self.targets.identity if component == "identity" else self.targets.ca
        return (one,) if one is not None else ()

    def dry_run(self, action: str) -> bool:
        return self.settings.dry_run or action_settings(self.settings, action).dry_run

    async def run(self, alert: AlertRaised, plan: Plan) -> None:
        until = self.clock() + plan.seconds if plan.seconds is not None else None
        fields: dict[str, Any] = {
            "target": plan.target,
            "until": until,
            "seconds": plan.seconds,
            "call": f"{plan.do.method} {plan.do.path}",
        }
        endpoints = self.endpoints(plan.component)
        if plan.loopback:
            _warn_loopback(alert, plan, self.dry_run(plan.action))
        if self.dry_run(plan.action):
            extra = {"would": f"{plan.do.method} {plan.do.path}?{urlencode(plan.do.params)}"}
            extra["endpoints"] = ",".join(t.url for t in endpoints) or MISSING[plan.component]
            await self.record(
                ResponseRecord.for_alert(alert, plan.action, "dry_run", dry_run=True, extra=extra, **fields)
            )
            return
        if not endpoints:
            failed = ResponseRecord.for_alert(
                alert, plan.action, "failed", error=MISSING[plan.component], **fields
            )
            await self.record(failed)
            return
        previous = self.undos.entries.get((plan.action, plan.target))
        if plan.undo is not None and until is not None:
            refusal = await self._prepare_undo(alert, plan, endpoints, until)
            if refusal is not None:
                result, why = refusal
                await self.record(ResponseRecord.for_alert(alert, plan.action, result, error=why, **fields))
                return
        results = await asyncio.gather(
            *(self.caller.call(t, plan.do.method, plan.do.path, plan.do.params) for t in endpoints)
        )
        if plan.undo is not None and _definitely_not_applied(results):
            # Nothing took effect: back to the undo there was before (an earlier quarantine of ours).
            if previous is None:
                await self.undos.remove((plan.action, plan.target))
            else:
                await self.undos.put(previous)
        await self.record(_outcome(alert, plan.action, results, fields))

    async def _prepare_undo(
        self, alert: AlertRaised, plan: Plan, endpoints: Sequence[AdminTarget], until: float
    ) -> tuple[str, str] | None:
        """Before an action the collector must undo: check the cap, leave alone what someone else put
        in force, and write the undo entry ahead of the call. Returns (result, why) to stop."""
        key = (plan.action, plan.target)
        if self.undos.full(key):
            return "failed", f"audit.responses.max_pending_undos ({self.undos.max_entries}) reached"
        ours = self.undos.entries.get(key)
        if plan.probe is not None and ours is None:
            probe = await self.caller.call(
                endpoints[0], plan.probe.method, plan.probe.path, plan.probe.params
            )
            if not probe.ok:
                return "failed", f"could not read the current state first: {probe.error}"
            if plan.in_force(probe.body):
                return "in_force", "already in force, set by someone else: the collector will not lift it"
        until = max(until, ours.until) if ours is not None else until
        await self.undos.put(PendingUndo(plan.action, plan.target, until, alert.alert_id, alert.rule))
        return None

    async def undo(self, entry: PendingUndo) -> bool:
        """Lift an expired action. True when it is done with (lifted, or refused for good)."""
        call = undo_call(entry.action, entry.target)
        if call is None:
            await self.undos.remove(entry.key)
            return True
        endpoints = self.endpoints(COMPONENT_OF[entry.action])
        base = ResponseRecord(
            entry.action,
            "undone",
            Actor(),
            entry.alert_id,
            entry.rule,
            target=entry.target,
            phase="undo",
            until=entry.until,
            call=f"{call.method} {call.path}",
        )
        if not endpoints:
            await self.record(_replace(base, result="failed", error=MISSING[COMPONENT_OF[entry.action]]))
            return False
        results = await asyncio.gather(
            *(self.caller.call(t, call.method, call.path, call.params) for t in endpoints)
        )
        record = _outcome_record(base, results)
        final = record.result == "undone" or all(400 <= r.status < 500 for r in results)
        if final:
            await self.undos.remove(entry.key)
            if record.result != "undone":
                record = _replace(record, error=f"{record.error} (refused: not retried; lift it by hand)")
        await self.record(record)
        return final


def _warn_loopback(alert: AlertRaised, plan: Plan, dry_run: bool) -> None:
    log.warn(
        "audit.response.blocking_loopback",
        ip=plan.target,
        rule=alert.rule,
        dry_run=dry_run,
        message="blocking a loopback address: local clients (and the demo) through this gateway are "
        "refused until it expires; add it to audit.responses.never_block to exempt it",
    )


def _definitely_not_applied(results: Sequence[CallResult]) -> bool:
    """Every call was refused outright (4xx): nothing took effect, so nothing needs undoing. A timeout
    or 5xx may have applied it: the undo entry stays, and lifting an absent quarantine is harmless."""
    return all(400 <= r.status < 500 for r in results)


def _outcome(
    alert: AlertRaised, action: str, results: Sequence[CallResult], fields: dict[str, Any]
) -> ResponseRecord:
    return _outcome_record(ResponseRecord.for_alert(alert, action, "done", **fields), results)


def _outcome_record(base: ResponseRecord, results: Sequence[CallResult]) -> ResponseRecord:
    """``base`` with the calls' outcome: done (or undone) only if every endpoint answered 2xx."""
    failed = [r for r in results if not r.ok]
    worst = max(results, key=lambda r: (not r.ok, r.status == 0, r.status))
    extra: dict[str, Any] = dict(base.extra)
    for answer in results:
        extra.update({k: v for k, v in answer.body.items() if k in ANSWER_COUNTS and isinstance(v, int)})
        if isinstance(answer.body.get("released"), bool):
            extra["released"] = answer.body["released"]
    if len(results) > 1:
        extra.update(succeeded=len(results) - len(failed), attempted=len(results))
    error = "; ".join(f"{r.url}: {r.error}" for r in failed)[:500] or None
    return _replace(
        base,
        result=base.result if not failed else "failed",
        status=worst.status or None,
        error=error,
        extra=extra,
    )


def _replace(record: ResponseRecord, **changes: Any) -> ResponseRecord:
    return dataclasses.replace(record, **changes)
