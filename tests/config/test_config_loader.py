"""garrison.yaml loading (garrison.config.loader, garrison.config.units) and the `check`/`schema` commands."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from garrison.cli import app
from garrison.config.loader import ConfigError, LoadedConfig, Problem, format_loc, load_config, parse_config
from garrison.config.model import GarrisonConfig

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "garrison.yaml"

VALID = """\
trust_domain: shop.local
gateway:
  listen: 127.0.0.1:8443
  jwt: {issuer: "https://idp.shop.local", audiences: [shop]}
services:
  orders:
    targets: [http://127.0.0.1:7001]
  payments:
    targets: [http://127.0.0.1:7002]
routes:
  - match: {path: /api/orders, prefix: true}
    service: orders
    auth: {require: jwt, scopes: [orders:read]}
  - match: {path: /api/payments, methods: [POST]}
    service: payments
    auth: {require: jwt}
"""


def yaml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def problems(text: str) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml(text), "garrison.yaml")
    return caught.value.problems


def only_problem(text: str) -> Problem:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def ok(text: str) -> LoadedConfig:
    return parse_config(yaml(text), "garrison.yaml")


def check(path: Path) -> Any:
    return CliRunner().invoke(app, ["check", "-c", str(path)])


# -- a valid file ------------------------------------------------------------------------------------------


def test_valid_file_parses_without_warnings() -> None:
    loaded = ok(VALID)
    assert loaded.warnings == []
    config = loaded.config
    assert config.trust_domain == "shop.local"
    assert sorted(config.services) == ["orders", "payments"]
    assert [r.service for r in config.routes] == ["orders", "payments"]


def test_empty_file_is_all_defaults_with_a_warning() -> None:
    loaded = parse_config("")
    assert loaded.config == GarrisonConfig()
    assert [(w.path, w.line) for w in loaded.warnings] == [("routes", None)]
    assert "no routes" in loaded.warnings[0].message


def test_top_level_must_be_a_mapping() -> None:
    problem = only_problem("- gateway\n- routes\n")
    assert problem.path == ""
    assert "mapping" in problem.message
    assert problem.render("f.yaml") == "f.yaml:1: <top>: the file must be a mapping of sections"


# -- unknown keys ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "line"),
    [
        ("trust_domian: shop.local\n", "trust_domian", 1),
        ("gateway:\n  listen: 127.0.0.1:1\n  limits:\n    max_bdy: 1MiB\n", "gateway.limits.max_bdy", 4),
        ("gateway:\n  tls: {cert: auto, mni_version: '1.3'}\n", "gateway.tls.mni_version", 2),
        (
            "services:\n  orders:\n    targets: [http://127.0.0.1:1]\n    pool:\n      max_idel: 3\n",
            "services.orders.pool.max_idel",
            5,
        ),
        (
            "services:\n  orders:\n    targets: [http://127.0.0.1:1]\n    health_check:\n\n      pth: /x\n",
            "services.orders.health_check.pth",
            6,
        ),
    ],
)
def test_unknown_key_reports_its_path_and_line(text: str, path: str, line: int) -> None:
    problem = only_problem(text)
    assert (problem.path, problem.line) == (path, line)
    assert problem.message.startswith("unknown key")


def test_unknown_key_in_a_list_entry_renders_like_users_write_it() -> None:
    text = (
        VALID
        + "  - match:\n      path: /x\n      pathh: /y\n    service: orders\n    auth: {require: none}\n"
    )
    problem = only_problem(text)
    assert problem.path == "routes[2].match.pathh"
    assert problem.line == 19
    assert problem.render("garrison.yaml") == (
        "garrison.yaml:19: routes[2].match.pathh: "
        "unknown key (check the spelling; unknown keys are never ignored)"
    )


def test_routes_1_match_pathh() -> None:
    text = """\
        services:
          orders: {targets: ['http://127.0.0.1:1']}
        routes:
          - match: {path: /a}
            service: orders
            auth: {require: none}
          - match:
              path: /b
              pathh: /c
            service: orders
            auth: {require: none}
        """
    problem = only_problem(text)
    assert problem.render("g.yaml").startswith("g.yaml:9: routes[1].match.pathh: unknown key")


def test_every_unknown_key_is_reported_at_once() -> None:
    found = problems(
        """\
        trust_domian: x.local
        gateway:
          listn: 127.0.0.1:1
          hsts: {max_ag: 1s}
        """
    )
    assert sorted((p.path, p.line) for p in found) == [
        ("gateway.hsts.max_ag", 4),
        ("gateway.listn", 3),
        ("trust_domian", 1),
    ]


# -- YAML-level errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("gateway: {}\nroutes: []\ngateway: {}\n", 3),
        ("gateway:\n  listen: 127.0.0.1:1\n  workers: 2\n  listen: 127.0.0.1:2\n", 4),
        ("services:\n  a:\n    targets: [http://127.0.0.1:1]\n    pool: {max_idle: 1, max_idle: 2}\n", 4),
    ],
)
def test_duplicate_yaml_key_is_an_error(text: str, line: int) -> None:
    problem = only_problem(text)
    assert "duplicate key" in problem.message
    assert problem.line == line


def test_invalid_yaml_reports_the_line() -> None:
    problem = only_problem("gateway:\n  listen: 127.0.0.1:1\n\tworkers: 2\n")
    assert problem.message.startswith("invalid YAML")
    assert problem.line == 3


# -- units -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        (512, 512),
        ("512", 512),
        ("512B", 512),
        ("16KiB", 16 * 1024),
        ("16kib", 16 * 1024),
        ("1MiB", 1024**2),
        ("1.5MiB", 1536 * 1024),
        ("2GiB", 2 * 1024**3),
        ("10KB", 10_000),
        ("10MB", 10_000_000),
        ("1GB", 10**9),
        ("0", 0),
    ],
)
def test_sizes(written: object, expected: int) -> None:
    value = json.dumps(written)
    assert ok(f"gateway:\n  limits: {{max_body: {value}}}\n").config.gateway.limits.max_body == expected


@pytest.mark.parametrize(
    ("written", "expected"),
    [(10, 10.0), (2.5, 2.5), ("500ms", 0.5), ("10s", 10.0), ("1.5s", 1.5), ("5m", 300.0), ("1h", 3600.0)],
)
def test_durations(written: object, expected: float) -> None:
    value = json.dumps(written)
    assert ok(f"gateway:\n  drain_timeout: {value}\n").config.gateway.drain_timeout == expected


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("1XB", "not a size: '1XB'"),
        ("1 MiBs", "not a size"),
        ("MiB", "not a size"),
        ("-1", "cannot be negative"),
        ("true", "expected a size"),
        ("1.5", "expected a size"),
        ("[1]", "expected a size"),
    ],
)
def test_bad_sizes(written: str, message: str) -> None:
    problem = only_problem(f"gateway:\n  limits:\n    max_header_bytes: {written}\n")
    assert (problem.path, problem.line) == ("gateway.limits.max_header_bytes", 3)
    assert message in problem.message


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("10 sec", "not a duration: '10 sec'"),
        ("10S", "not a duration"),
        ("1w", "not a duration"),
        ("ms", "not a duration"),
        ("-5", "cannot be negative"),
        ("false", "expected a duration"),
    ],
)
def test_bad_durations(written: str, message: str) -> None:
    problem = only_problem(
        f"services:\n  a:\n    targets: [http://127.0.0.1:1]\n    read_timeout: {written}\n"
    )
    assert (problem.path, problem.line) == ("services.a.read_timeout", 4)
    assert message in problem.message


# -- cross-references and routes ---------------------------------------------------------------------------


def test_route_to_an_unknown_service() -> None:
    problem = only_problem(VALID.replace("service: payments", "service: paymnts"))
    assert problem.path == "routes[1].service"
    assert problem.line == 15
    assert problem.message == "no service 'paymnts' (known: orders, payments)"


def test_route_to_a_service_when_none_is_defined() -> None:
    problem = only_problem("routes:\n  - match: {path: /}\n    service: orders\n    auth: {require: none}\n")
    assert (
        problem.render("g.yaml") == "g.yaml:3: routes[0].service: no service 'orders' (known: none defined)"
    )


def test_every_unknown_service_is_reported() -> None:
    text = VALID.replace("service: payments", "service: nope").replace("service: orders", "service: nada")
    assert [(p.path, p.line) for p in problems(text)] == [
        ("routes[0].service", 12),
        ("routes[1].service", 15),
    ]


def test_duplicate_route_match() -> None:
    text = (
        VALID
        + "  - match: {path: /api/orders, prefix: true}\n    service: payments\n    auth: {require: none}\n"
    )
    problem = only_problem(text)
    assert (problem.path, problem.line) == ("routes[2].match", 17)
    assert "same match as routes[0]" in problem.message


def test_duplicate_route_match_ignores_method_and_host_order() -> None:
    problem = only_problem(
        """\
        services:
          a: {targets: ['http://127.0.0.1:1']}
        routes:
          - match: {path: /x, methods: [GET, POST], hosts: [a.example, b.example]}
            service: a
            auth: {require: none}
          - match: {path: /x, methods: [POST, GET], hosts: [b.example, a.example]}
            service: a
            auth: {require: none}
        """
    )
    assert problem.path == "routes[1].match"


def test_same_path_with_other_methods_hosts_or_prefix_is_not_a_duplicate() -> None:
    loaded = ok(
        """\
        services:
          a: {targets: ['http://127.0.0.1:1']}
        routes:
          - match: {path: /x}
            service: a
            auth: {require: none}
          - match: {path: /x, prefix: true}
            service: a
            auth: {require: none}
          - match: {path: /x, methods: [GET]}
            service: a
            auth: {require: none}
          - match: {path: /x, hosts: [a.example]}
            service: a
            auth: {require: none}
        """
    )
    assert len(loaded.config.routes) == 4


def test_duplicate_route_name() -> None:
    text = VALID.replace(
        "  - match: {path: /api/orders", "  - name: api\n    match: {path: /api/orders"
    ).replace("  - match: {path: /api/payments", "  - name: api\n    match: {path: /api/payments")
    problem = only_problem(text)
    assert (problem.path, problem.line) == ("routes[1].name", 15)
    assert "duplicate route name 'api'" in problem.message


@pytest.mark.parametrize(
    ("written", "normalized"),
    [
        ("/api//orders", "/api/orders"),
        ("//admin", "/admin"),
        ("/a/./b", "/a/b"),
        ("/a/x/../b", "/a/b"),
        ("/%61dmin", "/admin"),
        ("/caf%c3%a9", "/caf%C3%A9"),
    ],
)
def test_non_normalized_route_path_suggests_the_normalized_form(written: str, normalized: str) -> None:
    problem = only_problem(
        f"services:\n  a: {{targets: ['http://127.0.0.1:1']}}\nroutes:\n  - match: {{path: '{written}'}}\n"
        "    service: a\n    auth: {require: none}\n"
    )
    assert (problem.path, problem.line) == ("routes[0].match.path", 4)
    assert f"write '{normalized}', not '{written}'" in problem.message


@pytest.mark.parametrize("written", ["api", "/a;b", "/a%2Fb", "/../x", "/a\\\\b", "/é"])
def test_invalid_route_path(written: str) -> None:
    problem = only_problem(
        f'services:\n  a: {{targets: ["http://127.0.0.1:1"]}}\nroutes:\n  - match: {{path: "{written}"}}\n'
        "    service: a\n    auth: {require: none}\n"
    )
    assert problem.path == "routes[0].match.path"
    assert problem.message.startswith("not a valid route path")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("methods", "[get]", "upper-case tokens"),
        ("hosts", "[Example.com]", "lower-case DNS names"),
        ("hosts", "['bad host']", "lower-case DNS names"),
    ],
)
def test_bad_route_match_values(field: str, value: str, message: str) -> None:
    problem = only_problem(
        "services:\n  a: {targets: ['http://127.0.0.1:1']}\nroutes:\n"
        f"  - match: {{path: /, {field}: {value}}}\n    service: a\n    auth: {{require: none}}\n"
    )
    assert problem.path == f"routes[0].match.{field}"
    assert message in problem.message


# -- addresses, targets, names -----------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1:8443", "0.0.0.0:0", "[::1]:8443", "localhost:80", "[::]:443"])
def test_valid_listen_addresses(address: str) -> None:
    assert ok(f"gateway:\n  listen: '{address}'\n").config.gateway.listen == address


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("8443", "expected HOST:PORT"),
        ("127.0.0.1", "expected HOST:PORT"),
        ("127.0.0.1:70000", "expected HOST:PORT"),
        ("127.0.0.1:http", "expected HOST:PORT"),
        ("example.com:8443", "must be an IP address or localhost"),
        ("[::1", "IP address or localhost"),
    ],
)
def test_invalid_listen_address(address: str, message: str) -> None:
    problem = only_problem(f"gateway:\n  admin:\n    listen: '{address}'\n")
    assert (problem.path, problem.line) == ("gateway.admin.listen", 3)
    assert message in problem.message


def test_listen_address_must_be_a_string() -> None:
    assert only_problem("gateway:\n  redirect_http: 8080\n").path == "gateway.redirect_http"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("ftp://127.0.0.1:1", "must use http:// or https://"),
        ("127.0.0.1:7001", "must use http:// or https://"),
        ("http://127.0.0.1:1/api", "no path, query or fragment"),
        ("http://user@127.0.0.1:1", "must not contain credentials"),
        ("http://127.0.0.1:1?x=1", "no path, query or fragment"),
    ],
)
def test_invalid_targets(target: str, message: str) -> None:
    problem = only_problem(f"services:\n  a:\n    targets: ['http://127.0.0.1:2', '{target}']\n")
    assert (problem.path, problem.line) == ("services.a.targets[1]", 3)
    assert message in problem.message


def test_a_service_needs_a_target() -> None:
    assert only_problem("services:\n  a: {targets: []}\n").path == "services.a.targets"
    assert only_problem("services:\n  a: {}\n").path == "services.a.targets"


def test_invalid_names() -> None:
    assert (
        "lower-case identifiers" in only_problem("services:\n  Orders: {targets: ['http://h:1']}\n").message
    )
    assert "lower-case DNS name" in only_problem("trust_domain: Shop_Local\n").message
    assert only_problem("gateway: {public_host: 'exa mple.com'}\n").path == "gateway.public_host"
    assert (
        "not an IP address or CIDR" in only_problem("gateway: {trusted_proxies: [10.0.0.0/8, x]}\n").message
    )


def test_tls_cert_and_key_go_together() -> None:
    assert "`key` is required" in only_problem("gateway:\n  tls: {cert: /etc/cert.pem}\n").message
    assert "must not be set" in only_problem("gateway:\n  tls: {key: /etc/key.pem}\n").message
    tls = ok("gateway:\n  tls: {cert: cert.pem, key: key.pem}\n").config.gateway.tls
    assert (tls.cert, tls.key) == ("cert.pem", "key.pem")


def test_numeric_bounds() -> None:
    assert only_problem("gateway: {workers: 0}\n").path == "gateway.workers"
    assert only_problem("gateway: {workers: 65}\n").path == "gateway.workers"
    assert only_problem("gateway: {limits: {max_headers: 0}}\n").path == "gateway.limits.max_headers"
    text = "services:\n  a:\n    targets: ['http://h:1']\n    retries: {attempts: 6, budget_ratio: 1.5}\n"
    assert [p.path for p in problems(text)] == [
        "services.a.retries.attempts",
        "services.a.retries.budget_ratio",
    ]


# -- warnings ----------------------------------------------------------------------------------------------


def test_insecure_disable_produces_a_warning() -> None:
    loaded = ok(
        VALID.replace(
            "  listen: 127.0.0.1:8443\n", "  listen: 127.0.0.1:8443\n  tls:\n    insecure_disable: true\n"
        )
    )
    assert loaded.config.gateway.tls.insecure_disable is True
    assert [(w.path, w.line) for w in loaded.warnings] == [("gateway.tls.insecure_disable", 5)]
    assert "plaintext" in loaded.warnings[0].message


def test_admin_listener_off_loopback_without_tls_is_an_error() -> None:
    problem = only_problem(
        VALID.replace(
            "  listen: 127.0.0.1:8443\n", "  listen: 127.0.0.1:8443\n  admin: {listen: 0.0.0.0:9901}\n"
        )
    )
    assert problem.path == "gateway.admin.listen"
    assert "gateway.admin.tls" in problem.message


def test_admin_listener_off_loopback_with_tls_is_accepted() -> None:
    admin = "  admin: {listen: 0.0.0.0:9901, tls: {cert: admin.pem, key: admin.key}}\n"
    loaded = ok(VALID.replace("  listen: 127.0.0.1:8443\n", "  listen: 127.0.0.1:8443\n" + admin))
    assert loaded.warnings == []
    assert loaded.config.gateway.admin.tls is not None


# -- load_config: files ------------------------------------------------------------------------------------


def test_state_dir_is_resolved_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc" / "garrison"
    conf_dir.mkdir(parents=True)
    config_file = conf_dir / "garrison.yaml"
    config_file.write_text("state_dir: ../state\n")
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    loaded = load_config(Path("etc/garrison/garrison.yaml"))
    assert loaded.config.state_dir == (tmp_path / "etc" / "state").resolve()
    assert loaded.source == config_file.resolve()


def test_default_state_dir_sits_next_to_the_config_file(tmp_path: Path) -> None:
    config_file = tmp_path / "garrison.yaml"
    config_file.write_text(VALID)
    assert load_config(config_file).config.state_dir == (tmp_path / ".garrison").resolve()


def test_absolute_state_dir_is_kept(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    config_file = tmp_path / "sub" / "garrison.yaml"
    config_file.parent.mkdir()
    config_file.write_text(f"state_dir: {elsewhere}\n")
    assert load_config(config_file).config.state_dir == elsewhere


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yaml")
    assert caught.value.problems[0].message.startswith("cannot read the file")
    assert str(tmp_path / "nope.yaml") in str(caught.value)


def test_config_error_message_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("gateway: {workers: 0, listen: nope}\n", "x.yaml")
    assert str(caught.value).splitlines() == [p.render("x.yaml") for p in caught.value.problems]
    assert len(caught.value.problems) == 2


def test_format_loc() -> None:
    assert format_loc(("routes", 2, "match", "path")) == "routes[2].match.path"
    assert format_loc(("services", "orders", "targets", 0)) == "services.orders.targets[0]"
    assert format_loc(()) == ""
    assert Problem("", "boom").render("f") == "f: <top>: boom"


# -- the CLI -----------------------------------------------------------------------------------------------


def test_check_exits_0_on_the_example() -> None:
    result = check(EXAMPLE)
    assert result.exit_code == 0, result.stderr
    assert "ok" in result.stderr
    # The demo routes are deliberately open (require: none), the demo's vault is in dev mode, and check
    # says so.
    assert "3 service(s), 3 route(s), 3 warning(s)" in result.stderr  # demo, orders, payments
    assert "vault.dev: dev mode" in result.stderr


def test_check_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    config_file = tmp_path / "garrison.yaml"
    config_file.write_text(
        yaml(
            """\
            gateway:
              workers: 0
              limits: {max_body: 1XB, header_timeout: 10 sec}
            routes:
              - match: {path: /a, pathh: /b}
                service: orders
                auth: {require: none}
            """
        )
    )
    result = check(config_file)
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error ")]
    assert lines == [
        f"error {config_file}:2: gateway.workers: Input should be greater than or equal to 1",
        f"error {config_file}:3: gateway.limits.max_body: not a size: '1XB' "
        "(use e.g. 512, 16KiB, 1MiB, 10MB)",
        f"error {config_file}:3: gateway.limits.header_timeout: not a duration: '10 sec' "
        "(use e.g. 500ms, 10s, 5m, 1h, 7d)",
        f"error {config_file}:5: routes[0].match.pathh: unknown key "
        "(check the spelling; unknown keys are never ignored)",
    ]
    assert "4 problem(s)" in result.stderr


def test_check_reports_cross_reference_problems(tmp_path: Path) -> None:
    config_file = tmp_path / "garrison.yaml"
    config_file.write_text(
        VALID.replace("service: payments", "service: nope")
        + "  - match: {path: /api/orders, prefix: true}\n    service: orders\n    auth: {require: none}\n"
    )
    result = check(config_file)
    assert result.exit_code == 1
    assert f"{config_file}:15: routes[1].service: no service 'nope'" in result.stderr
    assert f"{config_file}:17: routes[2].match: same match as routes[0]" in result.stderr
    assert "2 problem(s)" in result.stderr


def test_check_prints_warnings_and_exits_0(tmp_path: Path) -> None:
    config_file = tmp_path / "garrison.yaml"
    config_file.write_text(
        VALID.replace(
            "  listen: 127.0.0.1:8443\n", "  listen: 127.0.0.1:8443\n  tls: {insecure_disable: true}\n"
        )
    )
    result = check(config_file)
    assert result.exit_code == 0
    assert f"warning {config_file}:4: gateway.tls.insecure_disable: TLS is OFF" in result.stderr
    assert "1 warning(s)" in result.stderr


def test_check_on_a_missing_file_exits_1(tmp_path: Path) -> None:
    result = check(tmp_path / "missing.yaml")
    assert result.exit_code == 1
    assert "cannot read the file" in result.stderr


@pytest.mark.process
def test_check_runs_as_a_real_command() -> None:
    garrison = shutil.which("garrison", path=str(Path(sys.executable).parent))
    assert garrison is not None
    done = subprocess.run([garrison, "check", "-c", str(EXAMPLE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "ok" in done.stderr


def _all_objects(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = [node] if "properties" in node else []
        return found + [o for value in node.values() for o in _all_objects(value)]
    if isinstance(node, list):
        return [o for item in node for o in _all_objects(item)]
    return []


def test_schema_prints_a_strict_json_schema() -> None:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "GarrisonConfig"
    assert schema["additionalProperties"] is False
    objects = _all_objects(schema)
    assert len(objects) >= 12
    for section in objects:
        assert section.get("additionalProperties") is False, section.get("title")
    defs = schema["$defs"]
    for name in ("GatewayConfig", "LimitsConfig", "ServiceConfig", "HealthCheckConfig", "RouteMatch"):
        assert defs[name]["additionalProperties"] is False
    assert defs["ServiceConfig"]["properties"]["targets"]["minItems"] == 1
    assert schema["properties"]["services"]["additionalProperties"] == {"$ref": "#/$defs/ServiceConfig"}
    max_body = defs["LimitsConfig"]["properties"]["max_body"]
    assert {option["type"] for option in max_body["anyOf"]} == {"integer", "string"}


def test_schema_markdown_prints_the_reference() -> None:
    from garrison.config.docs import render_markdown

    result = CliRunner().invoke(app, ["schema", "--markdown"])
    assert result.exit_code == 0
    assert result.stdout == render_markdown()


# -- gaps found in review, now fixed -------------------------------------------------------------------


def test_unhashable_yaml_key_is_a_config_error() -> None:
    only_problem("? [a, b]\n: 1\n")


def test_target_port_out_of_range_is_refused_by_check() -> None:
    only_problem("services:\n  a:\n    targets: ['http://127.0.0.1:99999']\n")


def test_ipv6_loopback_admin_listener_does_not_warn() -> None:
    assert (
        ok(
            VALID.replace(
                "  listen: 127.0.0.1:8443\n", "  listen: 127.0.0.1:8443\n  admin: {listen: '[::1]:9901'}\n"
            )
        ).warnings
        == []
    )
