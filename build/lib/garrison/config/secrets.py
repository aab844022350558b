"""``services.<name>.secrets``: what a service may do in the vault, from which its policy ``svc-<name>``
is generated (vault/service_policies.py). Kept with the service, beside ``calls``, so that one file
decides routes, calls and secret access.

Each item is a vault path, read-only (``secret/orders/*``), or ``{path, capabilities}``. Paths are
below an engine's mount (``secret/``, ``transit/``, ``database/``); ``sys/`` and ``auth/`` are refused,
so that no service can be given the vault's administration from here. ``+`` stands for one segment,
a trailing ``*`` for any suffix, as in Vault policies. A KV path is written as the user sees it
(``secret/orders/db``), not as the API spells it (``secret/data/orders/db``): the generator maps it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from garrison.config.common import Strict

__all__ = ["SECRET_CAPABILITIES", "SECRET_MOUNTS", "SecretGrant", "SecretItem"]

SECRET_MOUNTS = ("secret", "transit", "database")
SECRET_CAPABILITIES = ("read", "create", "update", "patch", "delete", "list")
_SEGMENT = re.compile(r"[A-Za-z0-9_.@-]+")


def _check_secret_path(value: str) -> str:
    segments = value.split("/")
    if segments[0] not in SECRET_MOUNTS:
        raise ValueError(
            f"{value!r}: a secret path starts with one of the vault's mounts ({', '.join(SECRET_MOUNTS)}/); "
            "sys/ and auth/ cannot be granted to a service"
        )
    if len(segments) < 2 or segments[1] == "":
        raise ValueError(f"{value!r}: name a path below the mount, such as {segments[0]}/orders/*")
    for index, segment in enumerate(segments[1:], start=1):
        last = index == len(segments) - 1
        body = segment[:-1] if last and segment.endswith("*") else segment
        if segment == "+" or (last and body == ""):
            continue
        if not _SEGMENT.fullmatch(body) or body in (".", ".."):
            raise ValueError(
                f"{value!r}: segment {segment!r} is not a name (letters, digits, '.', '_', '-', '@'), "
                "'+' (one segment) or a trailing '*'"
            )
    return value


SecretPath = Annotated[str, AfterValidator(_check_secret_path)]
Capability = Literal["read", "create", "update", "patch", "delete", "list"]


def _read_only() -> list[Capability]:
    return ["read"]


class SecretGrant(Strict):
    """A vault path and what the service may do there."""

    path: SecretPath = Field(description="A vault path such as secret/orders/* or database/creds/orders.")
    capabilities: list[Capability] = Field(
        default_factory=_read_only, min_length=1, description="Vault capabilities (default: read)."
    )


SecretItem = SecretPath | SecretGrant
