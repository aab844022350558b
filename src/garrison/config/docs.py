"""The garrison.yaml reference (docs/config.md), generated from the pydantic model.

``render_markdown()`` walks ``GarrisonConfig.model_fields`` recursively and writes one table per
section, so a field added to the model appears in the reference with its type, default and
description; a test fails when docs/config.md is out of step. Run
``garrison schema --markdown > docs/config.md`` after changing the model.

Keys are written as users write them: ``gateway.limits.max_body``, ``services.<name>.targets``
(a mapping keyed by a name the user chooses), ``routes[].match.path`` (a list of entries).
The output depends only on the model, never on the environment, so it is byte-for-byte stable.
"""

from __future__ import annotations

import inspect
import json
import re
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from garrison.config.assembly import GarrisonConfig
from garrison.config.common import Cidr, ListenAddress
from garrison.config.services import TargetUrl
from garrison.config.units import Duration, Size

__all__ = ["Row", "Section", "render_markdown", "sections"]


def _validator_of(alias: Any) -> Any:
    """The validator function that marks a value of an ``Annotated`` alias such as ``Size``."""
    return next(getattr(m, "func", None) for m in get_args(alias)[1:] if hasattr(m, "func"))


# Annotated aliases recognised by their validator function, and the type name the reference shows.
_KINDS: dict[Any, str] = {
    _validator_of(Size): "size",
    _validator_of(Duration): "duration",
    _validator_of(ListenAddress): "HOST:PORT",
    _validator_of(Cidr): "IP or CIDR",
    _validator_of(TargetUrl): "URL",
}
_SIZE_UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))
_DURATION_UNITS = (("h", 3600.0), ("m", 60.0), ("s", 1.0))
_BASE_TYPES: dict[Any, str] = {bool: "boolean", int: "integer", float: "number", str: "string"}


@dataclass(frozen=True)
class Row:
    """One key of one section."""

    path: str
    type: str
    default: str
    description: str


@dataclass(frozen=True)
class Section:
    """One nested model, at the path where it appears in garrison.yaml."""

    path: str  # "" for the top level
    depth: int
    doc: str
    rows: tuple[Row, ...]

    @property
    def anchor(self) -> str:
        return _anchor(self.path)

    @property
    def title(self) -> str:
        return f"`{self.path}`" if self.path else "Top level"


def _anchor(path: str) -> str:
    """An explicit HTML id for a section: not a heading slug (renderers differ), never equal to one."""
    return "section-" + (re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-") or "top-level")


def sections(model: type[BaseModel] = GarrisonConfig) -> list[Section]:
    """Every section of ``model``, depth first, in field order."""
    return list(_walk(model, "", 0, ()))


def _walk(model: type[BaseModel], path: str, depth: int, stack: tuple[type, ...]) -> Iterator[Section]:
    if model in stack:
        raise ValueError(f"recursive config model at {path or '<top>'}: cannot document it as tables")
    rows: list[Row] = []
    children: list[tuple[type[BaseModel], str]] = []
    for name, field in model.model_fields.items():
        name = field.alias or name  # what garrison.yaml spells (`for`, a Python keyword, is `for_`)
        key = f"{path}.{name}" if path else name
        nested = _nested(field.annotation)
        if nested is None:
            type_text = _type_text(field.annotation, field.metadata)
        else:
            child_model, child_suffix, template = nested
            child_path = key + child_suffix
            type_text = template.format(link=f"(#{_anchor(child_path)})")
            children.append((child_model, child_path))
        rows.append(Row(key, type_text, _default_text(field), _cell(field.description or "")))
    yield Section(path, depth, inspect.cleandoc(model.__doc__ or ""), tuple(rows))
    for child_model, child_path in children:
        yield from _walk(child_model, child_path, depth + 1, (*stack, model))


def _nested(annotation: Any) -> tuple[type[BaseModel], str, str] | None:
    """For a field holding sections: (model, what the key gets to name one, type text with {link})."""
    optional = ""
    if _is_union(annotation):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) != 1:
            return None
        optional, annotation = ", optional", members[0]
    if _is_model(annotation):
        return annotation, "", "[section]{link}" + optional
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list and len(args) == 1 and _is_model(args[0]):
        return args[0], "[]", "list of [entries]{link}" + optional
    if origin is dict and len(args) == 2 and _is_model(args[1]):
        return args[1], ".<name>", "map of name to [section]{link}" + optional
    return None


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _type_text(annotation: Any, metadata: Sequence[Any] = ()) -> str:
    """A short human name for a field type, e.g. ``integer, 1 to 64`` or ``list of IP or CIDR``."""
    if get_origin(annotation) is Annotated:
        base, *extra = get_args(annotation)
        return _type_text(base, (*extra, *metadata))
    for item in metadata:
        kind = _KINDS.get(getattr(item, "func", None))
        if kind is not None:
            return kind
    if _is_union(annotation):
        members = [a for a in get_args(annotation) if a is not type(None)]
        text = " or ".join(_type_text(a) for a in members)
        return f"{text}, optional" if len(members) < len(get_args(annotation)) else text
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{_scalar(a)}`" for a in args)
    if origin is list:
        text = f"list of {_type_text(args[0])}" if args else "list"
    elif origin is dict:
        text = f"map of name to {_type_text(args[1])}" if len(args) == 2 else "map"
    elif isinstance(annotation, type) and issubclass(annotation, PurePath):
        text = "path"
    else:
        text = _BASE_TYPES.get(annotation, getattr(annotation, "__name__", str(annotation)))
    constraints = _constraints(metadata)
    return f"{text}, {constraints}" if constraints else text


def _constraints(metadata: Sequence[Any]) -> str:
    low = high = min_items = pattern = None
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            low = item.ge
        elif isinstance(item, annotated_types.Le):
            high = item.le
        elif isinstance(item, annotated_types.MinLen):
            min_items = item.min_length
        elif getattr(item, "pattern", None) is not None:
            pattern = item.pattern
    parts = []
    if low is not None and high is not None:
        parts.append(f"{_number(low)} to {_number(high)}")
    elif low is not None:
        parts.append(f"at least {_number(low)}")
    elif high is not None:
        parts.append(f"at most {_number(high)}")
    if min_items is not None:
        parts.append(f"at least {min_items} item{'s' if min_items != 1 else ''}")
    if pattern is not None:
        parts.append(f"matching `{pattern}`")
    return ", ".join(parts)


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    value = field.get_default(call_default_factory=True, validated_data={})
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "see its section"
    kind = next((_KINDS[m.func] for m in field.metadata if getattr(m, "func", None) in _KINDS), None)
    if kind == "size" and isinstance(value, int):
        return f"`{_size(value)}`"
    if kind == "duration" and isinstance(value, int | float):
        return f"`{_duration(float(value))}`"
    if isinstance(value, list | dict):
        return f"`{json.dumps(value, default=str)}`"
    return f"`{_scalar(value)}`"


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, PurePath):
        return value.as_posix()
    return str(value) if value != "" else '""'


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _size(value: int) -> str:
    for unit, factor in _SIZE_UNITS:
        if value and value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


def _duration(seconds: float) -> str:
    for unit, factor in _DURATION_UNITS:
        if seconds >= factor and (seconds / factor).is_integer():
            return f"{int(seconds / factor)}{unit}"
    return f"{round(seconds * 1000, 3):g}ms"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


_INTRO = """\
# garrison.yaml reference

<!-- Generated from the models in src/garrison/config/ by `garrison schema --markdown > docs/config.md`.
     Do not edit by hand: a test compares this file with the model. -->

`garrison.yaml` is the single source of truth of a Garrison deployment: one declarative file that
says which services exist, where their upstream targets are, which routes the gateway exposes and
how the edge behaves (TLS, limits, timeouts, retries, circuit breaking). This page lists every key;
it is generated from the pydantic model that validates the file, so it cannot drift from what
Garrison accepts.

A minimal file:

```yaml
trust_domain: shop.local
state_dir: .garrison               # relative to this file
gateway:
  listen: 0.0.0.0:8443
  tls: {cert: auto}
  limits: {max_body: 1MiB, header_timeout: 10s}
  jwt: {issuer: "https://login.shop.local", audiences: [shop-api]}
services:
  orders:
    targets: [http://127.0.0.1:7001]
routes:
  - match: {path: /api/orders, prefix: true, methods: [GET, POST]}
    service: orders
    auth: {require: jwt, scopes: [orders:read]}
```

## Rules of the file

- **Unknown keys are errors.** Every section forbids keys it does not define, so a misspelt key
  (`rate_limt`, `pathh`) is reported with its path and line instead of silently switching a
  control off: `garrison.yaml:7: routes[1].match.pathh: unknown key (check the spelling; unknown
  keys are never ignored)`.
- **A key written twice in one mapping is an error** (plain YAML parsers keep the last one).
- **Sizes** are a whole number of bytes or a number with a unit: `B`, `KB`, `MB`, `GB` (powers of
  1000) or `KiB`, `MiB`, `GiB` (powers of 1024), e.g. `512`, `16KiB`, `1MiB`, `10MB`. Unit letters
  are case-insensitive.
- **Durations** are a number of seconds or a number with a unit: `ms`, `s`, `m`, `h`, e.g. `500ms`,
  `10s`, `5m`, `1h`. Units are lower-case.
- **Relative paths**: `state_dir` and the files of `gateway.tls.cert` / `gateway.tls.key` are
  resolved against the directory of the config file, not the working directory.
- **Addresses** (`HOST:PORT`) take an IP address or `localhost`: `127.0.0.1:8443`, `[::1]:8443`,
  `0.0.0.0:8443`.
- **Names and values with a form**: service names are lower-case identifiers (`orders`,
  `payment-api`); `trust_domain`, `routes[].match.hosts` and `gateway.public_host` are DNS names
  (`hosts` are lower-case and may start with `*.`); `routes[].match.methods` are upper-case tokens
  (`GET`); a route path must already be in the gateway's normalized form (the error shows the form to
  write, e.g. `/api/orders` for `/api//orders`); upstream targets are `http://host:port` or
  `https://host:port` with no path; `gateway.tls.key` is required when `gateway.tls.cert` is a file
  path and refused when it is `auto`.
- **Moved keys** are errors that say where the key went: `gateway.redis` and `gateway.revocations`
  are the top-level `redis` and `revocations` (next to `trust_domain`), shared by every component.
- **Checks across keys** run once every value is valid (so they show up after the other problems
  are fixed): each `routes[].service` must name a key of `services`; route names must be unique; two
  routes may not have exactly the same match.
- **Warnings** (the file is still accepted): `gateway.tls.insecure_disable: true`, an admin
  listener that is not on loopback, and a file without routes.

## Tools

- `garrison check -c FILE` validates a file and prints every problem as
  `FILE:LINE: PATH: message`, then any warnings; it exits 1 if there is a problem, 0 otherwise.
  Run it in CI and before a reload.
- `garrison schema` prints the JSON Schema of the file (every section has
  `additionalProperties: false`) for editors and CI, e.g. with the YAML language server:
  `garrison schema > garrison.schema.json` and `# yaml-language-server: $schema=garrison.schema.json`
  at the top of the file.
- `garrison schema --markdown` prints this page.
- The gateway validates the file the same way when it starts and when it reloads (SIGHUP, or an edit
  while `gateway.watch_config` is on); a file with a problem is not loaded and the running
  configuration stays in place.

## How to read the tables

Keys are full paths as written in the file: `gateway.limits.max_body` is `max_body` inside `limits`
inside `gateway`; `services.<name>.targets` is `targets` inside a service whose name you choose;
`routes[].match.path` is `path` inside `match` in each entry of the `routes` list. A section whose
default is "see its section" may be left out entirely: each of its keys then takes its default.
"""


def render_markdown() -> str:
    """The whole reference page, deterministic for a given model."""
    found = sections()
    out = [_INTRO, "## Sections\n"]
    for section in found:
        indent = "  " * max(section.depth - 1, 0)
        out.append(f"{indent}- [{section.title}](#{section.anchor})")
    out.append("")
    for section in found:
        # The top level and its sections are peers (##), deeper sections nest below them.
        level = "#" * min(1 + max(section.depth, 1), 6)
        out.append(f'<a id="{section.anchor}"></a>\n')
        out.append(f"{level} {section.title}\n")
        if section.doc:
            out.append(f"{section.doc}\n")
        out.append("| key | type | default | description |")
        out.append("|---|---|---|---|")
        for row in section.rows:
            out.append(f"| `{row.path}` | {row.type} | {row.default} | {row.description} |")
        out.append("")
    return "\n".join(out)
