"""Types that more than one part of garrison.yaml uses: the strict base, addresses, TLS, Redis,
revocations, the admin listener, and the base of a component's section.

Every section forbids unknown keys: a misspelt key (``rate_limt``) must be an error, never a security
control silently switched off. Each field carries a description; docs/config.md is generated from
these models (``garrison schema --markdown``) and a test keeps the two in step.

A component's section (``gateway``, ``identity``, later ``mesh``, ``vault``, ``audit``) is a
``ComponentConfig``: its module imports this one and no other component's, and it may fill defaults
that depend on the rest of the file in ``with_derived_defaults``, which the assembly
(``garrison.config.assembly``) runs for every component after validation.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from garrison.config.addresses import is_loopback_host, parse_listen
from garrison.config.units import Duration

if TYPE_CHECKING:
    from garrison.config.assembly import GarrisonConfig

__all__ = [
    "HOSTNAME_RE",
    "AdminConfig",
    "AdminTlsConfig",
    "Cidr",
    "ComponentConfig",
    "HstsConfig",
    "ListenAddress",
    "RedisConfig",
    "RevocationsConfig",
    "Strict",
    "TlsConfig",
    "is_loopback_host",
    "parse_listen",
    "refuse_moved_keys",
]

HOSTNAME_RE = re.compile(
    r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)


class Strict(BaseModel):
    """Base for every section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_listen(value: str) -> str:
    parse_listen(value)
    return value


ListenAddress = Annotated[str, AfterValidator(_check_listen)]


def _check_cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or CIDR: {value!r}") from None
    return value


Cidr = Annotated[str, AfterValidator(_check_cidr)]


class HstsConfig(Strict):
    """Strict-Transport-Security sent on every response served over TLS."""

    enabled: bool = Field(True, description="Send Strict-Transport-Security on TLS responses.")
    max_age: Duration = Field(31536000, description="How long browsers remember to use HTTPS only.")
    include_subdomains: bool = Field(True, description="Apply the policy to every subdomain too.")
    preload: bool = Field(False, description="Add `preload` (only if you have submitted the domain).")


class TlsConfig(Strict):
    """TLS termination at the gateway. TLS 1.2+ only, AEAD ciphers with forward secrecy, ALPN http/1.1."""

    cert: str = Field(
        "auto",
        description="`auto` creates a local CA and a server certificate under state_dir/tls; "
        "otherwise the path of a PEM certificate chain.",
    )
    key: str | None = Field(None, description="Path of the PEM private key; required when `cert` is a path.")
    server_names: list[str] = Field(
        default_factory=lambda: ["localhost"],
        description="DNS names put in the `auto` certificate (127.0.0.1 and ::1 are always included).",
    )

    @field_validator("server_names")
    @classmethod
    def _server_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not HOSTNAME_RE.match(name):
                raise ValueError(f"server names are lower-case DNS names, got {name!r}")
        return value

    min_version: Literal["1.2", "1.3"] = Field("1.2", description="Lowest TLS version accepted.")
    insecure_disable: bool = Field(
        False,
        description="INSECURE: serve plaintext HTTP. For benchmarks and local experiments only; "
        "`garrison check` warns and the gateway logs a warning at every start.",
    )

    @model_validator(mode="after")
    def _cert_and_key(self) -> TlsConfig:
        if self.cert != "auto" and not self.key:
            raise ValueError("`key` is required when `cert` is a file path")
        if self.cert == "auto" and self.key:
            raise ValueError("`key` must not be set when `cert` is `auto`")
        return self


class RedisConfig(Strict):
    """The Redis that workers, replicas and components share (revocations, the gateway's blocklist and
    rate-limit counters)."""

    url: str | None = Field(None, pattern=r"^rediss?://", description="redis://host:port/db, or unset.")


class RevocationsConfig(Strict):
    """Revoked access tokens by `jti` (admin API `/revocations`, `garrison revoke JTI --for 10m`)."""

    storage: Literal["memory", "redis"] = Field(
        "memory",
        description="`redis` follows the revocations that any gateway or the identity provider writes "
        "to `redis` (see gateway.md, Token revocation); `memory` keeps them per gateway "
        "(with `workers: N` the supervisor applies each one to every worker).",
    )
    prefix: str = Field(
        "garrison:revoked", pattern=r"^[A-Za-z0-9:_-]{1,64}$", description="Redis key prefix."
    )
    max_entries: int = Field(
        100_000,
        ge=1,
        le=10_000_000,
        description="Most token revocations in force at once; a new one beyond it is refused (507, "
        "counted in `garrison_gateway_admin_refused_total`). Revocations last at most a day (or "
        "until the token's `exp`), so the set drains by itself.",
    )


class AdminTlsConfig(Strict):
    """TLS for the admin listener (required when it is not on loopback)."""

    cert: str = Field(description="Path of the PEM certificate chain the admin listener serves.")
    key: str = Field(description="Path of its PEM private key.")
    client_ca: str | None = Field(
        None,
        description="PEM CA file: a client certificate that chains to it is an admin credential "
        "(as the admin token is). Use a CA of its own for administrators.",
    )


class AdminConfig(Strict):
    """The admin listener: /metrics, /live, /ready and the blocklist and revocation APIs.

    Changes need the admin token (or a client certificate); reads are open on loopback only."""

    listen: ListenAddress = Field("127.0.0.1:9901", description="Address of the admin listener.")
    token_file: str | None = Field(
        None,
        description="File holding the admin token (`Authorization: Bearer`), created 0600 with 256 "
        "random bits when missing. Unset: state_dir/admin.token. The CLI reads it from here.",
    )
    tls: AdminTlsConfig | None = Field(
        None,
        description="Serve the admin listener over TLS. Required when `listen` is not on loopback, "
        "so the credential never crosses a network in clear.",
    )
    hosts: list[str] = Field(
        default_factory=list,
        description="DNS names the admin listener answers to in `Host` (IP literals of the listener, "
        "and localhost on loopback, always work). Any other Host is refused (DNS rebinding).",
    )

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for name in value:
            if not HOSTNAME_RE.match(name) or name.startswith("*"):
                raise ValueError(f"admin hosts are lower-case DNS names without wildcards, got {name!r}")
        return value


class ComponentConfig(Strict):
    """Base of a component's section of garrison.yaml (``gateway``, ``identity``, ...)."""

    def with_derived_defaults(self, config: GarrisonConfig) -> Self:
        """This section with the defaults that depend on other sections filled in.

        ``config`` is the whole file as validated, before any component's derivation: a hook reads
        what the operator wrote, never another hook's result, so the order hooks run in cannot
        matter. The default derives nothing."""
        del config
        return self

    def problems(self, config: GarrisonConfig) -> list[tuple[tuple[Any, ...], str]]:
        """Errors that need more of the file than this section: ``(location, message)`` pairs.

        Runs after every hook's derived defaults are in. The default finds none."""
        del config
        return []

    def warnings(self, config: GarrisonConfig) -> list[tuple[tuple[Any, ...], str]]:
        """Risky but valid choices, logged at every start. The default finds none."""
        del config
        return []

    def with_paths_resolved(self, resolve: Callable[[str], str]) -> Self:
        """This section with its file paths made absolute (``resolve`` maps one path, relative to
        the config file's directory). The default has no paths."""
        del resolve
        return self


MOVED_KEY = "moved_key"


def refuse_moved_keys(data: Any, moves: Mapping[str, str]) -> Any:
    """Refuse keys that moved elsewhere in the file, saying where (a ``mode="before"`` validator).

    Raises one ``moved_key`` error whose context lists each key found with its message; the loader
    reports them one per key, at the key's own path and line. The section's other keys are checked
    once the moved ones are gone."""
    if isinstance(data, dict):
        found = {key: message for key, message in moves.items() if key in data}
        if found:
            context = {"message": "; ".join(found.values()), "moves": found}
            raise PydanticCustomError(MOVED_KEY, "{message}", context)
    return data
