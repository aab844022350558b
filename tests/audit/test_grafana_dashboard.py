"""deploy/grafana/garrison.json: a dashboard Grafana imports (schema 39, a Prometheus datasource
variable), whose every query is valid PromQL (promtool) over metric names Garrison defines."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "garrison.json"
METRIC = re.compile(r"\bgarrison_[a-z0-9_]+")
LITERAL = re.compile(r"[\"'](garrison_[a-z0-9_]+)[\"']")
# Names of the audit contract (docs/audit.md, "Metrics and dashboard") whose code is written on the
# other audit branches (emitter, collector, detection, responses). Once merged, the source defines them.
CONTRACT_ELSEWHERE = {
    "garrison_audit_events_total",
    "garrison_audit_intake_rejected_total",
    "garrison_audit_duplicates_total",
    "garrison_audit_log_entries",
    "garrison_audit_commit_seconds_bucket",
    "garrison_audit_checkpoints_total",
    "garrison_audit_alerts_total",
    "garrison_audit_alerts_suppressed_total",
    "garrison_audit_responses_total",
    "garrison_audit_spool_events",
    "garrison_audit_spool_bytes",
    "garrison_audit_dropped_total",
}


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def defined_names() -> set[str]:
    """Every metric family name written as a literal in src/garrison, with the sample suffixes
    Prometheus exposes for counters and histograms."""
    names: set[str] = set()
    for source in (ROOT / "src" / "garrison").rglob("*.py"):
        for name in LITERAL.findall(source.read_text()):
            names |= {name + suffix for suffix in ("", "_total", "_bucket", "_sum", "_count")}
    return names


def test_structure() -> None:
    dashboard = load()
    assert dashboard["schemaVersion"] == 39 and dashboard["uid"] and dashboard["title"] == "Garrison"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    assert [p["title"] for p in panels if p["type"] == "row"] == ["Gateway", "Mesh", "Audit"]
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        covered = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not covered & cells, f"panel {panel['title']!r} overlaps another"
        cells |= covered
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and panel["description"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}" and target["refId"] and target["expr"]
    titles = {panel["title"] for panel in panels}
    for wanted in (
        "Requests by status",
        "Latency",
        "Refusals",
        "Calls by edge and outcome",
        "Denied calls",
        "Certificate expiry",
        "Events by type",
        "Alerts by rule",
        "Emitter spool depth",
        "Drops",
        "Shipping lag",
    ):
        assert wanted in titles


def test_every_metric_name_is_one_garrison_defines() -> None:
    used = {name for expr in queries(load()) for name in METRIC.findall(expr)}
    defined = defined_names()
    unknown = used - defined - CONTRACT_ELSEWHERE
    assert not unknown, f"not defined in src/garrison: {sorted(unknown)}"
    for name in ("garrison_audit_ship_lag_seconds", "garrison_mesh_certificate_expiry_timestamp_seconds"):
        assert name in used and name in defined


@pytest.mark.process  # runs promtool
def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule (Grafana's variables replaced by values)."""
    replacements = {"$__rate_interval": "5m", "$__range": "1h", "$job": ".*"}
    rules = []
    for index, expr in enumerate(queries(load())):
        for variable, value in replacements.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"garrison:dashboard_query_{index}", "expr": expr})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
