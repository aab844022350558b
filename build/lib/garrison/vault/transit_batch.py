"""Transit request items: one from the body's own fields, or many from ``batch_input``, as Vault reads them.

A single request and a batch go through the same items so that they cannot drift apart: the single
request is a batch of one whose error becomes the 400 itself. What makes the whole request
malformed (``batch_input`` not a list of objects, an encryption item without ``plaintext``, a context
given in some items and not others) fails the request; what is wrong with one item's value (bad
base64, a key version out of range, a ciphertext that does not authenticate) fails that item only
and is reported in its place in ``batch_results``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from garrison.vault.transit_keys import TransitError, b64decode
from garrison.vault.transit_params import as_int, as_str

__all__ = ["Item", "batch_answer", "decrypt_items", "encrypt_items", "rewrap_items"]


@dataclass
class Item:
    kind: str  # encrypt, decrypt, rewrap: decides the shape of a failed item, as Vault's
    reference: str = ""
    data: bytes = b""  # encrypt: the plaintext
    text: str = ""  # decrypt, rewrap: the ciphertext
    context: bytes = b""
    key_version: int = 0
    error: str | None = None

    def __repr__(self) -> str:  # plaintext and context stay out of any repr
        return f"Item(kind={self.kind!r}, key_version={self.key_version}, error={self.error!r})"

    def failed(self, message: str | None = None) -> dict[str, Any]:
        error = message if message is not None else self.error
        if self.kind == "decrypt":
            return {"plaintext": "", "error": error, "reference": self.reference}
        return {"error": error, "reference": self.reference}


def _raw_items(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    raw = body.get("batch_input")
    if raw is None:
        return None
    if not isinstance(raw, list):
        kind = "string" if isinstance(raw, str) else type(raw).__name__
        raise TransitError(f"failed to parse batch input: source data must be an array or slice, got {kind}")
    if not raw:
        raise TransitError("missing batch input to process")
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise TransitError(
                f"failed to parse batch input: [{index}] expected a map, got '{type(item).__name__}'"
            )
    return raw


def _fill(item: Item, raw: dict[str, Any]) -> Item:
    """Decode the item's context and key version; the first error found is the item's."""
    try:
        item.reference = as_str(raw, "reference")
        item.context = b64decode(as_str(raw, "context"))
        item.key_version = as_int(raw, "key_version")
    except TransitError as exc:
        item.error = str(exc)
    return item


def encrypt_items(body: dict[str, Any]) -> tuple[list[Item], bool]:
    raw_items = _raw_items(body)
    batch = raw_items is not None
    if raw_items is None:
        if body.get("plaintext") is None:
            raise TransitError("missing plaintext to encrypt")
        raw_items = [body]
    else:
        for index, raw in enumerate(raw_items):
            if raw.get("plaintext") is None:
                raise TransitError(
                    f"failed to parse batch input: '[{index}].plaintext' missing plaintext to encrypt"
                )
        with_context = {bool(raw.get("context")) for raw in raw_items}
        if len(with_context) > 1:
            raise TransitError("context should be set either in all the request blocks or in none")
    items = []
    for raw in raw_items:
        item = _fill(Item("encrypt"), raw)
        if item.error is None:
            try:
                item.data = b64decode(as_str(raw, "plaintext"))
            except TransitError as exc:
                item.error = str(exc)
        items.append(item)
    return items, batch


def _ciphertext_items(body: dict[str, Any], kind: str) -> tuple[list[Item], bool]:
    raw_items = _raw_items(body)
    batch = raw_items is not None
    if raw_items is None:
        if not body.get("ciphertext"):
            raise TransitError("missing ciphertext to decrypt")  # rewrap's too, in Vault's words
        raw_items = [body]
    items = []
    for raw in raw_items:
        item = _fill(Item(kind), raw)
        if item.error is None:
            try:
                item.text = as_str(raw, "ciphertext")
            except TransitError as exc:
                item.error = str(exc)
        if item.error is None and not item.text:
            item.error = "missing ciphertext to decrypt"
        items.append(item)
    return items, batch


def decrypt_items(body: dict[str, Any]) -> tuple[list[Item], bool]:
    return _ciphertext_items(body, "decrypt")


def rewrap_items(body: dict[str, Any]) -> tuple[list[Item], bool]:
    return _ciphertext_items(body, "rewrap")


def batch_answer(
    body: dict[str, Any], results: list[dict[str, Any]], section: str
) -> tuple[int, list[str] | None]:
    """The status of a batch answer and its warnings, as Vault decides them.

    Encrypt and decrypt: 200 when every item succeeded, else 400 (the body still holds every item),
    or ``partial_failure_response_code`` when some item succeeded. Rewrap answers 200 whatever its
    items say (OpenBao's and Vault's rewrap do not apply the rule: kept, so clients see the same).
    """
    failures = sum(1 for result in results if "error" in result)
    if section == "rewrap" or not failures:
        return 200, None
    code = 400
    if body.get("partial_failure_response_code") is not None and failures < len(results):
        wanted = as_int(body, "partial_failure_response_code")
        if 1 <= wanted <= 599:
            return wanted, None
        return code, [
            f"invalid HTTP response code override from partial_failure_response_code, reverting to {code}"
        ]
    return code, None
