"""What a sidecar holds of garrison.yaml: a compact copy, validated by a short-lived child process.

Why a child: the pydantic models of the whole file, with pydantic itself and YAML, stay resident for
the life of a process that imports them (about 15 MB), and a sidecar reads a handful of values from
three sections. So ``load_settings`` runs ``python -m garrison.mesh.sidecar.validate FILE``, which
loads the file with the one loader (config/loader.py: every section validated, cross-checked, paths
resolved, derived defaults filled), and prints what a sidecar needs as JSON; this module turns that
into frozen dataclasses with the shapes shared code reads (config/shapes.py). A file the loader
refuses comes back as the loader's own ``ConfigError``, with the same problems and wording, so
``garrison sidecar`` refuses to start and SIGHUP (``reload_settings``) keeps the running policy.

``settings_from_config`` is the one mapping from the model to this copy (the child uses it; tests
can too); ``settings_from_json`` and ``settings_to_json`` are its wire form between the two.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from garrison.admin.auth import admin_token_path
from garrison.config.problems import ConfigError, Problem
from garrison.events.settings import EmitterSettings, emitter_settings
from garrison.mesh.policy import Grant, grants_of
from garrison.pki.workload import JOIN_TOKEN_ENV

if TYPE_CHECKING:
    from garrison.config.assembly import GarrisonConfig

__all__ = [
    "AdminSettings",
    "ServiceSettings",
    "SidecarSettings",
    "SidecarSpec",
    "load_settings",
    "reload_settings",
    "settings_from_config",
    "settings_from_json",
    "settings_to_json",
]

VALIDATE_TIMEOUT = 60.0  # the child imports the models and reads one file: normally about a second


@dataclass(frozen=True)
class AdminTlsSettings:
    cert: str
    key: str
    client_ca: str | None


@dataclass(frozen=True)
class AdminSettings:
    listen: str
    token_file: str  # resolved: the section's own, or the deployment's (admin/auth.admin_token_path)
    tls: AdminTlsSettings | None
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class PoolSettings:
    max_idle: int
    idle_timeout: float


@dataclass(frozen=True)
class RetrySettings:
    attempts: int
    budget_ratio: float
    min_per_second: float


@dataclass(frozen=True)
class CircuitBreakerSettings:
    consecutive_failures: int
    open_for: float
    half_open_probes: int


@dataclass(frozen=True)
class HealthCheckSettings:
    path: str
    interval: float
    timeout: float
    healthy_threshold: int
    unhealthy_threshold: int


@dataclass(frozen=True)
class ServiceSettings:
    targets: tuple[str, ...]
    balancer: str
    connect_timeout: float
    read_timeout: float
    pool: PoolSettings
    retries: RetrySettings
    circuit_breaker: CircuitBreakerSettings
    health_check: HealthCheckSettings | None


@dataclass(frozen=True)
class SidecarSpec:
    """``mesh.sidecars.<name>``."""

    inbound: str
    address: str | None
    app: str | None
    outbound: str
    admin: AdminSettings


@dataclass(frozen=True)
class SidecarSettings:
    """Everything a sidecar reads of the file (its own entry is ``sidecars[service]``)."""

    source: Path  # the config file, absolute: SIGHUP reads it again
    trust_domain: str
    state_dir: Path
    ca_url: str | None  # mesh.ca.url (None: no mesh.ca, so only --cert-dir works)
    sidecars: dict[str, SidecarSpec]
    services: dict[str, ServiceSettings]
    grants: tuple[Grant, ...]  # the call policy's input (mesh/policy.py)
    audit: EmitterSettings | None = None  # where its audit events go (None: no `audit` section)


def settings_from_config(config: GarrisonConfig, source: Path) -> SidecarSettings:
    """The sidecar's copy of a loaded config (``source``: the file it came from)."""
    default_token = admin_token_path(config)
    sidecars = {}
    for name, spec in (config.mesh.sidecars if config.mesh is not None else {}).items():
        admin = spec.admin
        tls = admin.tls
        sidecars[name] = SidecarSpec(
            spec.inbound,
            spec.address,
            spec.app,
            spec.outbound,
            AdminSettings(
                admin.listen,
                admin.token_file or str(default_token),
                AdminTlsSettings(tls.cert, tls.key, tls.client_ca) if tls is not None else None,
                tuple(admin.hosts),
            ),
        )
    services = {
        name: ServiceSettings(
            tuple(service.targets),
            service.balancer,
            service.connect_timeout,
            service.read_timeout,
            PoolSettings(**service.pool.model_dump()),
            RetrySettings(**service.retries.model_dump()),
            CircuitBreakerSettings(**service.circuit_breaker.model_dump()),
            HealthCheckSettings(**service.health_check.model_dump()) if service.health_check else None,
        )
        for name, service in config.services.items()
    }
    return SidecarSettings(
        source,
        config.trust_domain,
        Path(config.state_dir),
        config.mesh.ca.url if config.mesh is not None else None,
        sidecars,
        services,
        tuple(grants_of(config)),
        emitter_settings(config),
    )


def settings_to_json(settings: SidecarSettings) -> str:
    return json.dumps(asdict(settings), default=str)


def settings_from_json(text: str) -> SidecarSettings:
    """The settings ``settings_to_json`` wrote (the child's output: trusted, but checked for shape)."""
    data = json.loads(text)
    try:
        return SidecarSettings(
            Path(data["source"]),
            str(data["trust_domain"]),
            Path(data["state_dir"]),
            data["ca_url"],
            {name: _sidecar(spec) for name, spec in data["sidecars"].items()},
            {name: _service(spec) for name, spec in data["services"].items()},
            tuple(_grant(grant) for grant in data["grants"]),
            EmitterSettings.from_dict(data["audit"]) if data.get("audit") else None,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed sidecar settings: {type(exc).__name__}: {exc}") from None


def _sidecar(data: dict[str, Any]) -> SidecarSpec:
    admin, tls = data["admin"], data["admin"]["tls"]
    return SidecarSpec(
        data["inbound"],
        data["address"],
        data["app"],
        data["outbound"],
        AdminSettings(
            admin["listen"],
            admin["token_file"],
            AdminTlsSettings(**tls) if tls is not None else None,
            tuple(admin["hosts"]),
        ),
    )


def _service(data: dict[str, Any]) -> ServiceSettings:
    check = data["health_check"]
    return ServiceSettings(
        tuple(data["targets"]),
        data["balancer"],
        data["connect_timeout"],
        data["read_timeout"],
        PoolSettings(**data["pool"]),
        RetrySettings(**data["retries"]),
        CircuitBreakerSettings(**data["circuit_breaker"]),
        HealthCheckSettings(**check) if check is not None else None,
    )


def _grant(data: dict[str, Any]) -> Grant:
    methods, paths = data["methods"], data["paths"]
    return Grant(
        data["callee"],
        data["caller"],
        tuple(methods) if methods is not None else None,
        tuple(paths) if paths is not None else None,
    )


# -- the child ------------------------------------------------------------------------------------


def _command(path: str | Path) -> list[str]:
    return [sys.executable, "-m", "garrison.mesh.sidecar.validate", str(path)]


def _environment() -> dict[str, str]:
    """The sidecar's environment but the join token: the child reads a file, nothing else."""
    return {name: value for name, value in os.environ.items() if name != JOIN_TOKEN_ENV}


def _verdict(path: str | Path, code: int | None, out: bytes, err: bytes) -> SidecarSettings:
    """The child's answer: the settings, or the loader's ConfigError raised again here."""
    try:
        answer = json.loads(out) if code == 0 else None
    except ValueError:
        answer = None
    if isinstance(answer, dict) and "settings" in answer:
        try:
            return settings_from_json(json.dumps(answer["settings"]))
        except ValueError as exc:
            err, answer = str(exc).encode(), None
    if not isinstance(answer, dict) or "problems" not in answer:
        reason = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit {code}"]
        problem = Problem(
            "", f"the config could not be validated (garrison.mesh.sidecar.validate): {reason[0]}"
        )
        raise ConfigError(str(path), [problem])
    problems = [Problem(p["path"], p["message"], p["line"]) for p in answer["problems"]]
    raise ConfigError(str(answer["filename"]), problems)


def load_settings(path: str | Path) -> SidecarSettings:
    """Validate ``path`` in a child and return the sidecar's settings; raises ConfigError."""
    try:
        done = subprocess.run(
            _command(path),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=_environment(),
            timeout=VALIDATE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(str(path), [Problem("", "validating the config took too long")]) from None
    return _verdict(path, done.returncode, done.stdout, done.stderr)


async def reload_settings(path: str | Path) -> SidecarSettings:
    """``load_settings`` without blocking the event loop (SIGHUP, while the sidecar serves)."""
    child = await asyncio.create_subprocess_exec(
        *_command(path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_environment(),
    )
    try:
        async with asyncio.timeout(VALIDATE_TIMEOUT):
            out, err = await child.communicate()
    except TimeoutError:
        child.kill()
        await child.wait()
        raise ConfigError(str(path), [Problem("", "validating the config took too long")]) from None
    return _verdict(path, child.returncode, out, err)
