"""Detection and responses join the collector: the setup hook ``serve`` installs.

Once the log is open (the component's ``append`` is the Appender), the responder is built from
``audit.responses`` and started (it reloads the undos a previous run left pending), the detector from
``audit.detection`` becomes a stage after the index, and ``/suppressions`` joins the admin API. At
drain, after the stages have seen every durable batch, the detector waits for the responses in flight
and saves its baseline, and the responder stops (pending undos stay on disk for the next start).
"""

from __future__ import annotations

import socket

from garrison.audit.component import AuditComponent
from garrison.audit.detect import suppressions_api
from garrison.audit.detect.detector import Detector
from garrison.audit.detect.sigma import SigmaSetupError
from garrison.audit.respond import responder_for
from garrison.core.runner import StartFailed

__all__ = ["install_detection"]


async def install_detection(component: AuditComponent) -> None:
    config = component.loaded.config
    if config.audit is None or not config.audit.detection.enabled:
        return
    responder = responder_for(
        config,
        component.loaded.source.parent,
        component.append,
        component.registry,
        instance=socket.gethostname(),
    )
    try:
        detector = Detector.for_config(config, component.append, responder, component.registry)
    except SigmaSetupError as exc:
        raise StartFailed(str(exc)) from None
    await responder.start()
    component.stages.append(detector)
    component.admin_api.register("/suppressions", suppressions_api(detector.suppressions, component.append))

    async def close() -> None:
        await detector.close()
        await responder.stop()

    component.closers.append(close)
