"""The shipped SigmaHQ web rules fire on real attack strings and stay quiet on benign requests."""

from __future__ import annotations

from pathlib import Path

import pytest
from detect_harness import T0, Harness, benign_traffic, request

from garrison.audit.detect import SigmaSetupError

ATTACKS = [
    (
        "/download",
        "file=../../../etc/passwd",
        "Mozilla/5.0",
        "7745c2ea-24a5-4290-b680-04359cb84b35",
    ),  # traversal
    ("/static/../../../../etc/passwd", "", "Mozilla/5.0", "7745c2ea-24a5-4290-b680-04359cb84b35"),
    ("/login", "user=admin%27%20OR%201%3D1--", "Mozilla/5.0", "0d9f4c53-7a0e-4b52-9d4c-1f7e8a2b6c31"),
    ("/login", "user=admin' OR 1=1--", "Mozilla/5.0", "0d9f4c53-7a0e-4b52-9d4c-1f7e8a2b6c31"),
    (
        "/items",
        "id=1%20UNION%20SELECT%20password%20FROM%20users",
        "Mozilla/5.0",
        "5513deaf-f49a-46c2-a6c8-3f111b5cb453",
    ),
    ("/", "", "sqlmap/1.8.11#stable (https://sqlmap.org)", "19aa4f58-94ca-45ff-bc34-92e533c0994a"),
    (
        "/",
        "",
        "Mozilla/5.00 (Nikto/2.5.0) (Evasions:None) (Test:000001)",
        "19aa4f58-94ca-45ff-bc34-92e533c0994a",
    ),
    ("/.git/config", "", "Mozilla/5.0", "953d460b-f810-420a-97a2-cfca4c98e602"),  # source code enumeration
    (
        "/search",
        "q=%3Cscript%3Ealert(1)%3C/script%3E&x=document.cookie",
        "Mozilla/5.0",
        "65354b83-a2ea-4ea6-8414-3ab38be0d409",
    ),
]


@pytest.mark.parametrize(("path", "query", "agent", "rule_id"), ATTACKS)
def test_attack_strings_fire_their_rule(path: str, query: str, agent: str, rule_id: str) -> None:
    h = Harness()
    alerts = h.feed([request(T0, "203.0.113.50", path, 200, query, agent)])
    assert f"sigma:{rule_id}" in {a.details["rule"] for a in alerts}
    alert = next(a for a in alerts if a.details["rule"] == f"sigma:{rule_id}")
    assert alert.details["actor"] == "ip:203.0.113.50" and alert.details["count"] == 1
    assert alert.details["events"][0]["details"]["path"] == path


def test_benign_requests_match_no_sigma_rule() -> None:
    h = Harness()
    benign = [e for e in benign_traffic(5000) if e.type == "http.request"]
    benign += [
        request(T0, "198.51.100.1", "/api/orders/etc/passwd-reset"),
        request(T0, "198.51.100.1", "/docs/select-a-plan", query="order=desc"),
        request(T0, "198.51.100.1", "/blog/how-git-works", query="ref=home"),
        request(T0, "198.51.100.1", "/static/logo.svg"),
    ]
    assert [a.details["rule"] for a in h.feed(benign) if a.details["rule"].startswith("sigma:")] == []


def test_non_web_events_never_reach_the_matcher() -> None:
    h = Harness()
    assert h.detector.sigma is not None
    calls: list[int] = []
    original = h.detector.sigma.evaluate
    h.detector.sigma.evaluate = lambda rows: calls.append(len(rows)) or original(rows)  # type: ignore[method-assign]
    h.feed([e for e in benign_traffic(500) if e.type != "http.request"])
    assert calls == []
    h.feed([request(T0, "198.51.100.1", "/api")])
    assert calls == [1]


def test_user_rule_directory_and_per_rule_settings(tmp_path: Path) -> None:
    (tmp_path / "mine.yml").write_text(
        "title: Admin panel probe\nid: 11111111-2222-4333-8444-555555555555\n"
        "logsource: {category: webserver}\n"
        "detection:\n  sel:\n    cs-uri-stem|startswith: /wp-admin\n  condition: sel\nlevel: low\n"
    )
    rules = {"sigma:11111111-2222-4333-8444-555555555555": {"severity": "high", "responses": ["block_ip"]}}
    h = Harness(sigma_dirs=[str(tmp_path)], sigma_builtin=False, rules=rules)
    alerts = h.feed([request(T0, "203.0.113.8", "/WP-ADMIN/setup.php")])  # Sigma matches ignore case
    assert [a.details["severity"] for a in alerts] == ["high"]
    assert [r.responses for r in h.responder.alerts] == [("block_ip",)]


def test_bad_rules_are_refused_with_the_file_named(tmp_path: Path) -> None:
    (tmp_path / "bad.yml").write_text(
        "title: x\nlogsource: {category: webserver}\ndetection: {condition: nope}\n"
    )
    with pytest.raises(SigmaSetupError, match=r"bad\.yml"):
        Harness(sigma_dirs=[str(tmp_path)])
    (tmp_path / "bad.yml").write_text(
        "title: x\nlogsource: {category: webserver}\ndetection:\n  sel: {cs-cookie: a}\n  condition: sel\n"
    )
    with pytest.raises(SigmaSetupError, match="cs-cookie"):
        Harness(sigma_dirs=[str(tmp_path)])
    with pytest.raises(SigmaSetupError, match="not loaded"):
        Harness(rules={"sigma:does-not-exist": {"enabled": False}})


def test_the_shipped_rules_and_their_licence_are_package_data() -> None:
    import fnmatch
    import tomllib

    from garrison.audit.detect.sigma import BUILTIN_RULES

    root = Path(__file__).resolve().parents[3]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "garrison"
    ]
    shipped = sorted(p.relative_to(BUILTIN_RULES.parents[2]).as_posix() for p in BUILTIN_RULES.iterdir())
    assert "audit/detect/sigma_rules/LICENSE.Detection.Rules.md" in shipped
    assert [p for p in shipped if not any(fnmatch.fnmatch(p, g) for g in globs)] == []
