"""``audit.shipping``: copies of the log for Loki, Elasticsearch and OTLP receivers.

Each shipper reads the log from its own saved position (state_dir/audit/ship/<name>.cursor), so a
shipper's name is its identity: renaming one ships the whole log again. Credentials are files named
here (read at start and again after a 401/403), never values in the file; TLS verification is on
unless ``tls.insecure_skip_verify`` says otherwise, which `garrison check` and every start warn about.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from garrison.config.common import Strict
from garrison.config.units import Duration

__all__ = [
    "ElasticsearchShipperConfig",
    "LokiShipperConfig",
    "OtlpShipperConfig",
    "ShipperAuth",
    "ShipperConfig",
    "ShipperTls",
    "ShippingConfig",
]

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,63}$")
_RESERVED_LABELS = frozenset({"job", "component", "outcome"})
# An Elasticsearch index name: lower case, no spaces or \/*?"<>|,#:, plus the date fields we fill in.
_INDEX = re.compile(r"^[a-z0-9][a-z0-9._+-]*(%[Ymd][a-z0-9._+-]*)*$")


class ShipperTls(Strict):
    """How a shipper verifies its receiver over https://."""

    ca_file: str | None = Field(
        None, description="PEM bundle of the CAs to trust for the receiver (default: the system's)."
    )
    insecure_skip_verify: bool = Field(
        False,
        description="INSECURE: do not verify the receiver's certificate (anyone on the path can read "
        "and alter the shipped log). Warned at `garrison check` and at every start.",
    )


class ShipperAuth(Strict):
    """At most one way to authenticate to the receiver; secrets come from files (mode 0600)."""

    username: str | None = Field(None, max_length=256, description="Basic auth user name.")
    password_file: str | None = Field(None, description="File holding the basic auth password.")
    bearer_token_file: str | None = Field(None, description="File holding a bearer token.")
    api_key_file: str | None = Field(
        None, description="File holding an Elasticsearch API key (sent as `Authorization: ApiKey`)."
    )

    @model_validator(mode="after")
    def _one_scheme(self) -> ShipperAuth:
        if (self.username is None) != (self.password_file is None):
            raise ValueError("basic auth needs both `username` and `password_file`")
        schemes = [self.password_file, self.bearer_token_file, self.api_key_file]
        if sum(scheme is not None for scheme in schemes) > 1:
            raise ValueError("choose one of basic auth, `bearer_token_file`, `api_key_file`")
        return self

    def with_paths_resolved(self, resolve: Callable[[str], str]) -> ShipperAuth:
        updates = {
            name: resolve(value)
            for name in ("password_file", "bearer_token_file", "api_key_file")
            if (value := getattr(self, name)) is not None
        }
        return self.model_copy(update=updates)

    @property
    def configured(self) -> bool:
        return any(v is not None for v in (self.password_file, self.bearer_token_file, self.api_key_file))


class _ShipperBase(Strict):
    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$",
        description="Unique name: the metrics' `shipper` label and the cursor file's name.",
    )
    url: str = Field(
        pattern=r"^https?://[^\s@/]+(/[^\s?#]*)?$",
        description="Base URL of the receiver (its API path is appended); no credentials in it.",
    )
    auth: ShipperAuth = Field(default_factory=ShipperAuth, description="Credentials, from files.")
    tls: ShipperTls = Field(default_factory=ShipperTls, description="TLS verification of the receiver.")
    timeout: Duration = Field(10.0, gt=0, le=300, description="Longest wait for one request's answer.")
    batch_max: int = Field(500, ge=1, le=10000, description="Most events in one request.")
    batch_wait: Duration = Field(
        1.0, ge=0, le=60, description="Longest an event waits for its batch to fill before it is sent."
    )
    retry_initial: Duration = Field(0.5, gt=0, le=60, description="First back-off after a failed request.")
    retry_max: Duration = Field(
        60.0, gt=0, le=3600, description="Longest back-off (it doubles per failure, with jitter)."
    )

    def with_paths_resolved(self, resolve: Callable[[str], str]) -> Self:
        tls = self.tls
        if tls.ca_file is not None:
            tls = tls.model_copy(update={"ca_file": resolve(tls.ca_file)})
        return self.model_copy(update={"auth": self.auth.with_paths_resolved(resolve), "tls": tls})


class LokiShipperConfig(_ShipperBase):
    """Grafana Loki's push API (`POST /loki/api/v1/push`)."""

    type: Literal["loki"] = Field(description="`loki`.")
    tenant: str | None = Field(
        None, max_length=256, pattern=r"^[^\s|]+$", description="Sent as X-Scope-OrgID (multi-tenant Loki)."
    )
    job: str = Field("garrison-audit", max_length=128, description="The `job` stream label.")
    labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=8,
        description="Fixed extra stream labels (such as `env`); never put per-event values here.",
    )

    @field_validator("labels")
    @classmethod
    def _label_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, label in value.items():
            if not _LABEL_NAME.match(name) or name in _RESERVED_LABELS:
                raise ValueError(f"label {name!r}: a Prometheus label name other than job/component/outcome")
            if len(label) > 128:
                raise ValueError(f"label {name!r}: at most 128 characters")
        return value


class ElasticsearchShipperConfig(_ShipperBase):
    """Elasticsearch (or OpenSearch) bulk API (`POST /_bulk`, `create` actions keyed by event id)."""

    type: Literal["elasticsearch"] = Field(description="`elasticsearch`.")
    index: str = Field(
        "garrison-audit-%Y.%m.%d",
        max_length=200,
        description="Index name; %Y, %m and %d are filled in from each event's UTC date.",
    )

    @field_validator("index")
    @classmethod
    def _index_name(cls, value: str) -> str:
        if not _INDEX.match(value):
            raise ValueError("an index name is lower case letters, digits, . _ + - and %Y %m %d")
        return value


class OtlpShipperConfig(_ShipperBase):
    """An OpenTelemetry collector's OTLP/HTTP logs endpoint (`POST /v1/logs`, JSON encoding)."""

    type: Literal["otlp"] = Field(description="`otlp`.")
    service_name: str = Field(
        "garrison-audit", max_length=128, description="The `service.name` resource attribute."
    )


ShipperConfig = Annotated[
    LokiShipperConfig | ElasticsearchShipperConfig | OtlpShipperConfig, Field(discriminator="type")
]


class ShippingConfig(Strict):
    """Where the log is shipped (none by default). Every shipper sends every event, in log order."""

    shippers: list[ShipperConfig] = Field(
        default_factory=list, max_length=16, description="Receivers, each with its own position in the log."
    )

    @field_validator("shippers")
    @classmethod
    def _unique_names(cls, value: list[Any]) -> list[Any]:
        names = [shipper.name for shipper in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"shipper names must be unique: {', '.join(duplicates)}")
        return value

    def with_paths_resolved(self, resolve: Callable[[str], str]) -> ShippingConfig:
        return self.model_copy(update={"shippers": [s.with_paths_resolved(resolve) for s in self.shippers]})

    def warnings(self) -> list[tuple[tuple[Any, ...], str]]:
        """Shippers that send the log where others may read or alter it."""
        found: list[tuple[tuple[Any, ...], str]] = []
        for index, shipper in enumerate(self.shippers):
            where = ("audit", "shipping", "shippers", index)
            if shipper.tls.insecure_skip_verify:
                found.append(
                    (
                        (*where, "tls", "insecure_skip_verify"),
                        f"shipper {shipper.name!r} does not verify its receiver's certificate (insecure)",
                    )
                )
            if shipper.url.startswith("http://"):
                what = "credentials and the audit log" if shipper.auth.configured else "the audit log"
                found.append(
                    ((*where, "url"), f"shipper {shipper.name!r} sends {what} in plaintext (http://)")
                )
        return found
