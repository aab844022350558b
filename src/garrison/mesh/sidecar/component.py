"""``garrison sidecar -c FILE --service NAME``: the sidecar as a component process (core/runner.py).

``start`` binds the inbound listener (mutual TLS, the identity's server context), the outbound
listener (plain HTTP, loopback only) and the admin listener (/live, /ready, /metrics), and follows
the CA's published state (revocations, quarantine) through the identity's ``on_state``. SIGHUP
(``reload``) takes the call policy again from the file (validated in a child: settings.py), and, for
an identity read from files (``--cert-dir``), the certificate too, loaded into the live contexts.
The configuration is the sidecar's compact copy (settings.py), never the pydantic models.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from garrison.admin.api import AdminApi
from garrison.admin.listener import AdminListener, start_admin_listener
from garrison.config.addresses import is_loopback_host, parse_listen
from garrison.core.runner import StartFailed
from garrison.core.sockets import address_of, bind_socket
from garrison.events.emitter import AuditEmitter, Emitter, NullEmitter, register_metrics
from garrison.mesh.policy import CallPolicy, gateway_id, service_id
from garrison.mesh.sidecar.audit import SidecarAudit
from garrison.mesh.sidecar.gate import Gate
from garrison.mesh.sidecar.identity import FileIdentity, SidecarIdentity, certificate_expiry
from garrison.mesh.sidecar.inbound import InboundConnection, InboundSide
from garrison.mesh.sidecar.outbound import OutboundConnection, OutboundSide, Peer
from garrison.mesh.sidecar.settings import SidecarSettings, reload_settings
from garrison.proxy.upstream.build import build_service
from garrison.telemetry import logging as log
from garrison.telemetry.sidecar_metrics import SidecarMetrics

__all__ = ["SidecarComponent", "dial_address"]


def dial_address(listen: str) -> str:
    """host:port to dial for a listen address (0.0.0.0 as 127.0.0.1)."""
    host, port = parse_listen(listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SidecarComponent:
    name = "sidecar"

    def __init__(self, settings: SidecarSettings, service: str, identity: SidecarIdentity) -> None:
        if service not in settings.sidecars:
            raise StartFailed(f"no sidecar configured for {service!r} (mesh.sidecars)")
        self.sidecars = settings.sidecars  # listeners and peers: a restart changes them, not SIGHUP
        self.config_path = settings.source
        self.service = service
        self.identity = identity
        self.settings = settings
        self.gate = Gate(service, CallPolicy.from_grants(settings.grants))
        self.metrics = SidecarMetrics()
        # Audit events (component `mesh`, instance: the service), sent with the workload certificate.
        self.emitter: Emitter = (
            AuditEmitter(settings.audit, "mesh", service, identity.client_context)
            if settings.audit is not None
            else NullEmitter()
        )
        register_metrics(self.emitter, self.metrics.registry)
        self.audit = SidecarAudit(self.emitter)
        self.metrics.service = service
        self.metrics.certificate_expiry = lambda: certificate_expiry(identity)
        self.inbound: InboundSide | None = None
        self.outbound: OutboundSide | None = None
        self.admin: AdminListener | None = None
        self._reloading = asyncio.Lock()  # SIGHUPs in a row: the last one reads the file last

    def _sides(self, loop: asyncio.AbstractEventLoop) -> tuple[InboundSide, OutboundSide]:
        config, spec = self.settings, self.sidecars[self.service]
        service_spec = config.services[self.service]
        app_url = spec.app or service_spec.targets[0]
        app = build_service(self.service, service_spec, loop, None, component="sidecar", targets=[app_url])
        peers = {
            name: Peer(
                build_service(
                    name,
                    config.services[name],
                    loop,
                    self.identity.client_context(),
                    component="sidecar",
                    targets=[f"https://{address}"],
                    health_checks=False,  # the peer's sidecar answers only mTLS calls the policy allows
                ),
                service_id(config.trust_domain, name),
                address.encode(),
            )
            for name, peer in self.sidecars.items()
            for address in [peer.address or dial_address(peer.inbound)]
        }
        common = (loop, self.gate, self.identity, self.metrics, gateway_id(config.trust_domain))
        return InboundSide("inbound", *common, app=app), OutboundSide("outbound", *common, peers=peers)

    async def start(self) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        spec = self.sidecars[self.service]
        if not is_loopback_host(parse_listen(spec.outbound)[0]):
            raise StartFailed("mesh.sidecars.*.outbound must be loopback: it calls with this identity")
        self.inbound, self.outbound = inbound, outbound = self._sides(loop)
        inbound.audit = outbound.audit = self.audit
        await self.emitter.start()
        self.identity.on_state(self.gate.apply)
        inbound_sock, outbound_sock = bind_socket(spec.inbound), bind_socket(spec.outbound)
        await inbound.serve(
            lambda: InboundConnection(inbound).as_protocol(), inbound_sock, self.identity.server_context()
        )
        await outbound.serve(lambda: OutboundConnection(outbound).as_protocol(), outbound_sock, None)
        listeners = {"inbound": address_of(inbound_sock), "outbound": address_of(outbound_sock)}
        admin = spec.admin
        api = AdminApi(self._not_ready, self.metrics.registry)
        self.admin = await start_admin_listener(admin, Path(admin.token_file), self.config_path.parent, api)
        listeners["admin"] = self.admin.address
        log.log("sidecar.started", service=self.service, spiffe_id=self.identity.spiffe_id, **listeners)
        return listeners

    def _not_ready(self) -> list[str]:
        reasons = ["draining"] if self.inbound is not None and self.inbound.draining else []
        return reasons + (["quarantined"] if self.gate.self_quarantined else [])

    def details(self) -> dict[str, Any]:
        return {"service": self.service, "spiffe_id": self.identity.spiffe_id}

    async def drain(self) -> None:
        for side in (self.inbound, self.outbound):
            if side is not None:
                await side.drain()
        if self.admin is not None:
            await self.admin.close()
        await self.emitter.close()  # after the last request: its events go out or to the spool
        close: Any = getattr(self.identity, "close", None)  # the CA client's renewal and state tasks
        if close is not None:
            await close()

    async def reload(self) -> None:
        """SIGHUP: the call policy from the file again; a file identity's certificate too. A file
        the loader refuses raises ConfigError (the runner logs it) and the policy stays."""
        async with self._reloading:
            settings = await reload_settings(self.config_path)
            self.gate.policy = CallPolicy.from_grants(settings.grants)
            self.settings = settings
            if isinstance(self.identity, FileIdentity):
                self.identity.reload()
        log.log("sidecar.reloaded", service=self.service, callers=self.gate.policy.callers_of(self.service))
