"""Per-service policies from garrison.yaml: ``services.<name>.secrets`` becomes the policy ``svc-<name>``,
and the workload certificate ``spiffe://<td>/svc/<name>`` logs in with it (``auth/cert/login``).

The policies are generated, not hand-written: at every unseal and every SIGHUP the vault writes each
configured service's policy and deletes the ``svc-*`` policies of services no longer configured, so the
file stays the one source of truth (a hand edit of a ``svc-*`` policy lasts until the next reload).
The same policies can be given to AppRole roles (``token_policies=["svc-orders"]``) for services
outside the mesh.

A KV v2 path is written as users name secrets (``secret/orders/db``) and mapped onto the API paths:
``secret/data/...`` gets the capabilities asked for (``list`` aside); reading also grants
``read``/``list`` on ``secret/metadata/...`` (a service may list what it may read), and ``delete``
grants ``update`` on ``secret/delete/...`` (deleting given versions). Other engines' paths are used
as written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from garrison.config.model import GarrisonConfig
from garrison.config.secrets import SecretGrant, SecretItem
from garrison.telemetry import logging as log

__all__ = ["PREFIX", "ServicePolicies", "policy_text"]

PREFIX = "svc-"


def _grant(item: SecretItem) -> SecretGrant:
    return item if isinstance(item, SecretGrant) else SecretGrant(path=item)


def _rules(items: list[SecretItem]) -> dict[str, set[str]]:
    rules: dict[str, set[str]] = {}
    for item in items:
        grant = _grant(item)
        capabilities = set(grant.capabilities)
        mount, _, rest = grant.path.partition("/")
        if mount != "secret":
            rules.setdefault(grant.path, set()).update(capabilities)
            continue
        data = capabilities - {"list"}
        if data:
            rules.setdefault(f"secret/data/{rest}", set()).update(data)
        if capabilities & {"read", "list"}:
            rules.setdefault(f"secret/metadata/{rest}", set()).update({"read", "list"})
        if "delete" in capabilities:
            rules.setdefault(f"secret/delete/{rest}", set()).add("update")
    return rules


def policy_text(service: str, items: list[SecretItem]) -> str:
    """The HCL of ``svc-<service>`` (paths sorted, so the same file gives the same text)."""
    lines = [f"# Generated from garrison.yaml services.{service}.secrets: edit the file, not this policy."]
    for path, capabilities in sorted(_rules(items).items()):
        listed = ", ".join(json.dumps(c) for c in sorted(capabilities))
        lines += [f"path {json.dumps(path)} {{", f"  capabilities = [{listed}]", "}"]
    return "\n".join(lines) + "\n"


class PolicyWriter(Protocol):
    """What ``install`` needs of ``core.Unsealed``."""

    async def put_policy(self, name: str, text: str) -> None: ...

    async def delete_policy(self, name: str) -> None: ...

    async def policy_names(self) -> list[str]: ...


@dataclass(frozen=True)
class ServicePolicies:
    """What one configuration says: each service's policy text, and which SPIFFE ID is which service."""

    trust_domain: str
    policies: dict[str, str]  # policy name -> HCL
    services: dict[str, str]  # SPIFFE ID -> service name (every configured service)

    @classmethod
    def from_config(cls, config: GarrisonConfig) -> ServicePolicies:
        policies = {
            PREFIX + name: policy_text(name, service.secrets)
            for name, service in config.services.items()
            if service.secrets
        }
        services = {f"spiffe://{config.trust_domain}/svc/{name}": name for name in config.services}
        return cls(config.trust_domain, policies, services)

    def policies_for(self, service: str) -> list[str]:
        """A service's token policies at cert login: ``default``, and its own when it has secrets."""
        own = PREFIX + service
        return sorted({"default", own} if own in self.policies else {"default"})

    async def install(self, unsealed: PolicyWriter) -> None:
        """Write every generated policy and drop the ``svc-*`` ones no service has any more."""
        for name, text in self.policies.items():
            await unsealed.put_policy(name, text)
        stale = [n for n in await unsealed.policy_names() if n.startswith(PREFIX) and n not in self.policies]
        for name in stale:
            await unsealed.delete_policy(name)
        log.log("vault.service_policies.installed", policies=sorted(self.policies), removed=stale)
