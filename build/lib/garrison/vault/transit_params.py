"""Request parameters of the transit paths, converted as Vault's field framework converts them.

Vault accepts ``"2"`` for an integer and ``"true"`` for a boolean (Go's ``strconv`` rules), and says
which field it could not convert; this does the same, so a client written for Vault gets the same
leniency and the same 400s. Parameters Vault has and this vault does not implement are refused by
name rather than ignored: a client asking for an exportable key or a convergent ciphertext must not
silently get something else.
"""

from __future__ import annotations

import re
from typing import Any

from garrison.vault.transit_keys import TransitError

__all__ = ["as_bool", "as_int", "as_str", "refuse_unsupported"]

_INT = re.compile(r"[-+]?\d{1,18}")
_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")
# Parameter -> why it is refused when set to anything but its default.
UNSUPPORTED = {
    "exportable": "exportable keys are not supported by this vault",
    "allow_plaintext_backup": "plaintext backups are not supported by this vault",
    "auto_rotate_period": "automatic key rotation is not supported by this vault",
    "nonce": "caller-supplied nonces are not supported by this vault",
    "associated_data": "associated data is not supported by this vault",
}


def _invalid(name: str, kind: str) -> TransitError:
    return TransitError(f"error converting input for field \"{name}\": cannot parse value as '{kind}'")


def as_int(body: dict[str, Any], name: str, default: int = 0) -> int:
    value = body.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise _invalid(name, "int")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT.fullmatch(value):
        return int(value)
    raise _invalid(name, "int")


def as_bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value in _TRUE + _FALSE:
        return value in _TRUE
    raise _invalid(name, "bool")


def as_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _invalid(name, "string")
    return value


def refuse_unsupported(body: dict[str, Any]) -> None:
    for name, reason in UNSUPPORTED.items():
        value = body.get(name)
        if value in (None, "", False, 0, "0", "false"):
            continue
        raise TransitError(reason)
