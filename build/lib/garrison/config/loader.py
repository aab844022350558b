"""Loading garrison.yaml: YAML with line numbers, strict validation, cross-reference checks.

PyYAML silently keeps the last of two equal keys; here a duplicate key is an error, because
``auth:`` written twice must not quietly drop the first block. Each problem carries the path of the
bad key in the form users write it (``routes[2].match.path``) and its line in the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from garrison.config.assembly import GarrisonConfig, with_derived_defaults
from garrison.config.common import MOVED_KEY, ComponentConfig
from garrison.config.problems import ConfigError, Problem

__all__ = ["ConfigError", "LoadedConfig", "Problem", "format_loc", "load_config", "parse_config"]


@dataclass
class LoadedConfig:
    """A validated config plus the warnings a user should see."""

    config: GarrisonConfig
    source: Path
    warnings: list[Problem] = field(default_factory=list)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                ) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _line_index(root: yaml.Node | None) -> dict[tuple[Any, ...], int]:
    """Map every key path in the YAML tree to its 1-based line.

    Each node is walked once: an alias (``*x``) reuses its anchor's node, and expanding aliases
    again and again is how a small "billion laughs" file would take minutes to index."""
    lines: dict[tuple[Any, ...], int] = {}
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[Any, ...]]] = [(root, ())] if root is not None else []
    while stack:
        node, path = stack.pop()
        lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                child = (*path, key_node.value)
                lines[child] = key_node.start_mark.line + 1
                stack.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*path, index)) for index, item in enumerate(node.value))
    return lines


def format_loc(loc: tuple[Any, ...]) -> str:
    """``('routes', 2, 'match', 'path')`` -> ``routes[2].match.path``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _nearest_line(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _pydantic_problems(exc: ValidationError, lines: dict[tuple[Any, ...], int]) -> list[Problem]:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        # Pydantic appends the validator's name for union/function validators; drop non-key parts.
        loc = tuple(
            part for part in error["loc"] if isinstance(part, int) or not part.startswith("function-")
        )
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == MOVED_KEY:
            # One problem per moved key, at that key's own path and line (common.refuse_moved_keys).
            moves: dict[str, str] = error.get("ctx", {}).get("moves", {})
            problems += [
                Problem(format_loc((*loc, k)), m, _nearest_line(lines, (*loc, k))) for k, m in moves.items()
            ]
            continue
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; unknown keys are never ignored)"
        problems.append(Problem(format_loc(loc), message, _nearest_line(lines, loc)))
    return problems


def _sections(config: GarrisonConfig) -> list[ComponentConfig]:
    """The component sections present in the file (an absent optional one has no checks)."""
    sections = (getattr(config, name) for name in type(config).model_fields)
    return [section for section in sections if isinstance(section, ComponentConfig)]


def _cross_checks(config: GarrisonConfig) -> list[tuple[tuple[Any, ...], str]]:
    """The top-level keys' own checks, then each component section's (``ComponentConfig.problems``)."""
    errors: list[tuple[tuple[Any, ...], str]] = []
    if config.revocations.storage == "redis" and not config.redis.url:
        errors.append((("revocations", "storage"), "storage `redis` needs `redis.url`"))
    errors += _call_graph_problems(config)
    for section in _sections(config):
        errors += section.problems(config)
    return errors


def _call_graph_problems(config: GarrisonConfig) -> list[tuple[tuple[Any, ...], str]]:
    """Each ``services.<name>.calls`` entry names a service of this file."""
    known = ", ".join(sorted(config.services))
    return [
        (("services", name, "calls", index, "service"), f"no service {call.service!r} (known: {known})")
        for name, service in config.services.items()
        for index, call in enumerate(service.calls)
        if call.service not in config.services
    ]


def _warnings(config: GarrisonConfig) -> list[tuple[tuple[Any, ...], str]]:
    return [warning for section in _sections(config) for warning in section.warnings(config)]


def _resolve_paths(config: GarrisonConfig, base_dir: Path) -> GarrisonConfig:
    """``state_dir``, and each section's file paths (``with_paths_resolved``), relative to the config
    file's directory."""

    def resolved(path: str | Path) -> Path:
        return Path(path) if Path(path).is_absolute() else (base_dir / path).resolve()

    config = config.model_copy(update={"state_dir": resolved(config.state_dir)})
    updates: dict[str, ComponentConfig] = {}
    for name in type(config).model_fields:
        section = getattr(config, name)
        if isinstance(section, ComponentConfig):
            updates[name] = section.with_paths_resolved(lambda path: str(resolved(path)))
    config = config.model_copy(update=updates)
    return config


def parse_config(text: str, filename: str = "garrison.yaml", base_dir: Path | None = None) -> LoadedConfig:
    """Parse and validate config text; raise ConfigError listing every problem."""
    try:
        node = yaml.compose(text, Loader=_UniqueKeyLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(filename, [Problem("", f"invalid YAML: {problem}", line)]) from None
    if data is None:
        data = {}
    lines = _line_index(node)
    if not isinstance(data, dict):
        raise ConfigError(filename, [Problem("", "the file must be a mapping of sections", 1)])
    try:
        config = GarrisonConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(filename, _pydantic_problems(exc, lines)) from None
    if base_dir is not None:
        config = _resolve_paths(config, base_dir)
    config = with_derived_defaults(config)
    errors = _cross_checks(config)
    if errors:
        found = [Problem(format_loc(loc), msg, _nearest_line(lines, loc)) for loc, msg in errors]
        # In the order of the file, whichever section's check found them: users fix top-down.
        raise ConfigError(filename, sorted(found, key=lambda problem: problem.line or 0))
    warnings = [Problem(format_loc(loc), msg, _nearest_line(lines, loc)) for loc, msg in _warnings(config)]
    return LoadedConfig(config=config, source=Path(filename), warnings=warnings)


def load_config(path: str | Path) -> LoadedConfig:
    """Read and validate a garrison.yaml file. ``state_dir`` is resolved relative to the file."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(source), [Problem("", f"cannot read the file: {exc.strerror}")]) from None
    loaded = parse_config(text, str(source), base_dir=source.parent)
    loaded.source = source.resolve()
    return loaded
