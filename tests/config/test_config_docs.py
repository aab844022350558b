"""docs/config.md is generated from the config model (garrison.config.docs) and must stay in step."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from garrison.config.docs import render_markdown, sections
from garrison.config.loader import parse_config
from garrison.config.model import GarrisonConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def _leaf_paths(schema: dict[str, Any], node: dict[str, Any], prefix: str) -> list[str]:
    """Every leaf key of the JSON Schema, spelt as in the docs: a.b, services.<name>.x, routes[].y.

    Walks the JSON Schema rather than the pydantic fields, so it checks docs.py's walk independently.
    """
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
    options = [o for o in node.get("anyOf", []) if o.get("type") != "null"]
    if len(options) == 1 and ("$ref" in options[0] or options[0].get("type") in ("object", "array")):
        return _leaf_paths(schema, options[0], prefix)
    if node.get("type") == "array" and "$ref" in node.get("items", {}):
        return _leaf_paths(schema, node["items"], f"{prefix}[]")
    values = node.get("additionalProperties")
    if node.get("type") == "object" and isinstance(values, dict):
        if "$ref" not in values and "properties" not in values:
            return [prefix]  # a map of plain values (claim matchers) is one key in the docs
        return _leaf_paths(schema, values, f"{prefix}.<name>")
    if "properties" in node:
        paths = []
        for name, child in node["properties"].items():
            paths += _leaf_paths(schema, child, f"{prefix}.{name}" if prefix else name)
        return paths
    return [prefix]


def _all_leaf_paths() -> list[str]:
    schema = GarrisonConfig.model_json_schema()
    return _leaf_paths(schema, schema, "")


def test_docs_config_md_is_up_to_date() -> None:
    expected = render_markdown()
    actual = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    assert actual == expected, (
        "docs/config.md is out of date with the config model; regenerate it with "
        "`garrison schema --markdown > docs/config.md`"
    )


def test_render_is_deterministic() -> None:
    assert render_markdown() == render_markdown()


def test_leaf_walk_sees_nested_and_optional_sections() -> None:
    paths = _all_leaf_paths()
    # The walk itself must reach the awkward places, or the coverage test below proves nothing.
    for path in (
        "trust_domain",
        "gateway.limits.max_body",
        "gateway.tls.insecure_disable",
        "services.<name>.targets",
        "services.<name>.health_check.unhealthy_threshold",
        "routes[].match.path",
        "routes[].service",
    ):
        assert path in paths
    assert len(paths) == len(set(paths)) > 40


@pytest.mark.parametrize("path", _all_leaf_paths())
def test_every_leaf_field_is_documented(path: str) -> None:
    text = render_markdown()
    row = re.search(rf"^\| `{re.escape(path)}` \| ([^|]+) \| ([^|]+) \| (.+) \|$", text, re.MULTILINE)
    assert row is not None, f"{path} has no row in docs/config.md"
    type_text, default, description = (part.strip() for part in row.groups())
    assert type_text and default and description, f"{path}: empty cell in {row.group(0)}"


def test_every_section_has_a_heading_and_a_table() -> None:
    text = render_markdown()
    for section in sections():
        assert f'<a id="{section.anchor}"></a>' in text
        assert f"](#{section.anchor})" in text  # listed in the contents
        if section.path:
            assert f" `{section.path}`\n" in text
    expected = {"", "gateway", "gateway.tls", "services.<name>", "services.<name>.health_check"}
    assert expected <= {s.path for s in sections()}
    assert "routes[].match" in {s.path for s in sections()}


def test_nested_sections_are_linked_from_their_parent_row() -> None:
    text = render_markdown()
    assert "| `gateway.tls` | [section](#section-gateway-tls) |" in text
    assert "| `services` | map of name to [section](#section-services-name) |" in text
    assert "| `routes` | list of [entries](#section-routes) |" in text
    assert "[section](#section-services-name-health-check), optional | unset |" in text


def test_types_and_defaults_are_human() -> None:
    text = render_markdown()
    assert "| `gateway.limits.max_body` | size | `1MiB` |" in text
    assert "| `gateway.limits.max_header_bytes` | size | `16KiB` |" in text
    assert "| `gateway.limits.header_timeout` | duration | `10s` |" in text
    assert "| `gateway.listen` | HOST:PORT | `0.0.0.0:8443` |" in text
    assert "| `gateway.workers` | integer, 1 to 64 | `1` |" in text
    assert "| `services.<name>.targets` | list of URL, at least 1 item | **required** |" in text
    assert "| `services.<name>.balancer` | one of `round_robin`, `least_requests` |" in text
    assert '| `gateway.tls.server_names` | list of string | `["localhost"]` |' in text
    assert "| `gateway.tls.key` | string, optional | unset |" in text


def test_intro_explains_the_rules_and_tools() -> None:
    text = render_markdown()
    for needle in ("unknown key", "KiB", "500ms", "garrison check -c FILE", "garrison schema"):
        assert needle in text


def test_example_in_the_intro_is_a_valid_config() -> None:
    example = re.search(r"```yaml\n(.*?)```", render_markdown(), re.DOTALL)
    assert example is not None
    loaded = parse_config(example.group(1))
    assert loaded.warnings == []
    assert list(loaded.config.services) == ["orders"]


def test_table_cells_never_break_the_table() -> None:
    for section in sections():
        for row in section.rows:
            for cell in (row.type, row.default, row.description):
                assert "\n" not in cell
                assert re.search(r"(?<!\\)\|", cell) is None, cell


# -- the hand-written gateway docs quote the code; keep the quotes exact ---------------------------


GATEWAY_DOC = DOC.parent / "gateway.md"


def test_gateway_doc_quotes_the_normalization_rules_verbatim() -> None:
    import garrison.uri

    # From the source: a module compiled with mypyc (setup.py) has no __doc__.
    source = Path(garrison.uri.__file__).with_name("normalize.py").read_text(encoding="utf-8")
    doc = ast.get_docstring(ast.parse(source)) or ""
    rules = doc[doc.index("1. origin-form") : doc.index("\n\nThe query is passed")]
    assert rules.count("\n") > 10
    assert rules in GATEWAY_DOC.read_text(encoding="utf-8"), (
        "docs/gateway.md must quote the rule list of garrison/uri/normalize.py verbatim"
    )


def test_gateway_doc_names_every_metric() -> None:
    from garrison.telemetry.metrics import GatewayMetrics

    exposition = GatewayMetrics().render().decode()
    names = re.findall(r"^# TYPE (\S+) ", exposition, re.MULTILINE)
    assert len(names) >= 9
    text = GATEWAY_DOC.read_text(encoding="utf-8")
    missing = [name for name in names if f"`{name}`" not in text]
    assert missing == [], f"docs/gateway.md does not list these metrics: {missing}"
