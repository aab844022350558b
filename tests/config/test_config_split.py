"""The config split (issue 8): component modules that validate alone, derived defaults as
per-component hooks, the URI grammar below the config, and `redis`/`revocations` at the top level."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from garrison.cli import app
from garrison.config.assembly import GarrisonConfig, with_derived_defaults
from garrison.config.common import ComponentConfig
from garrison.config.gateway import GatewayConfig
from garrison.config.identity import IdentityConfig
from garrison.config.loader import ConfigError, Problem, parse_config
from garrison.config.routes import RouteConfig
from garrison.config.services import ServiceConfig

ROUTED = """\
services:
  orders: {targets: ["http://127.0.0.1:7001"]}
routes:
  - {match: {path: /orders}, service: orders, auth: {require: jwt}}
"""


def problems(text: str) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "garrison.yaml")
    return caught.value.problems


def imported_by(code: str) -> set[str]:
    """The garrison modules a fresh interpreter has loaded after running ``code``."""
    probe = code + "\nimport sys\nprint(' '.join(m for m in sys.modules if m.startswith('garrison')))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


# -- each component module validates alone -----------------------------------------------------------


def test_the_gateway_section_validates_alone() -> None:
    gateway = GatewayConfig.model_validate({"listen": "127.0.0.1:8443", "limits": {"max_body": "2MiB"}})
    assert gateway.limits.max_body == 2 * 1024 * 1024
    with pytest.raises(ValidationError, match="not a host name"):
        GatewayConfig.model_validate({"public_host": "bad host"})


def test_the_identity_section_validates_alone() -> None:
    assert IdentityConfig.model_validate({"access_token_ttl": "10m"}).access_token_ttl == 600.0
    with pytest.raises(ValidationError, match="access_token_ttl"):
        IdentityConfig.model_validate({"access_token_ttl": "2d"})


def test_routes_and_services_use_the_proxy_grammar_alone() -> None:
    with pytest.raises(ValidationError, match="write '/a/b', not '/a//b'"):
        RouteConfig.model_validate({"match": {"path": "/a//b"}, "service": "s", "auth": {"require": "none"}})
    with pytest.raises(ValidationError, match="must be an origin only"):
        ServiceConfig.model_validate({"targets": ["http://127.0.0.1:7001/api"]})


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("garrison.config.gateway", {"garrison.config.identity", "garrison.config.assembly"}),
        ("garrison.config.identity", {"garrison.config.gateway", "garrison.config.assembly"}),
        ("garrison.config.loader", {"garrison.proxy", "garrison.gateway", "garrison.identity"}),
    ],
)
@pytest.mark.process
def test_a_config_module_loads_nothing_above_it(module: str, absent: set[str]) -> None:
    assert imported_by(f"import {module}") & absent == set()


@pytest.mark.process
def test_validation_fails_closed_with_no_component_loaded() -> None:
    """Nothing to register: a bare loader, with no proxy or component imported, refuses bad paths
    and targets exactly as `garrison check` and the gateway do."""
    code = textwrap.dedent(
        """
        from garrison.config.loader import ConfigError, parse_config
        for text in ("routes: [{match: {path: /a/../../b}, service: s, auth: {require: none}}]",
                     "services: {s: {targets: ['http://user@127.0.0.1:1']}}"):
            try:
                parse_config(text)
            except ConfigError as error:
                print(error)
            else:
                raise SystemExit("accepted: " + text)
        """
    )
    loaded = imported_by(code)
    assert not {
        m for m in loaded if m.startswith(("garrison.proxy", "garrison.gateway", "garrison.identity"))
    }


# -- derived defaults are per-component hooks --------------------------------------------------------


def test_identity_makes_the_gateway_trust_it_and_receive_its_revocations() -> None:
    config = parse_config("identity: {issuer: 'https://idp.local:9443'}\n" + ROUTED).config
    assert config.gateway.jwt is not None
    assert (config.gateway.jwt.issuer, config.gateway.jwt.jwks_url) == (
        "https://idp.local:9443",
        "https://idp.local:9443/jwks",
    )
    assert config.gateway.jwt.audiences == ["garrison"]
    assert config.gateway.jwt.ca is not None and config.gateway.jwt.ca.endswith("identity/tls/ca.pem")
    assert config.identity is not None
    assert config.identity.revocation_push == ["http://127.0.0.1:9901"]


def test_redis_revocations_need_no_push() -> None:
    text = "redis: {url: 'redis://127.0.0.1:6379/0'}\nrevocations: {storage: redis}\nidentity: {}\n" + ROUTED
    config = parse_config(text).config
    assert config.identity is not None and config.identity.revocation_push == []


def test_what_the_operator_wrote_wins_over_a_hook() -> None:
    text = (
        "identity: {revocation_push: ['https://gw.local:9901'], revocation_push_token_file: t}\n"
        "gateway: {jwt: {issuer: 'https://other.local', audiences: [x]}}\n" + ROUTED
    )
    config = parse_config(text).config
    assert config.gateway.jwt is not None and config.gateway.jwt.issuer == "https://other.local"
    assert config.identity is not None and config.identity.revocation_push == ["https://gw.local:9901"]
    assert config.identity.revocation_push_token_file == "t"


def test_no_identity_no_derivation() -> None:
    config = GarrisonConfig()
    assert with_derived_defaults(config) is config


seen_by_probe: list[GarrisonConfig] = []


class _Probe(ComponentConfig):
    """A component the assembly has never heard of, recording what its hook is given."""

    def with_derived_defaults(self, config: GarrisonConfig) -> _Probe:
        seen_by_probe.append(config)
        return self.model_copy()


class _WithProbe(GarrisonConfig):
    probe: _Probe = _Probe()


def test_the_assembly_runs_every_components_hook_on_the_file_as_written() -> None:
    config = _WithProbe.model_validate({"identity": {}})
    derived = with_derived_defaults(config)
    assert len(seen_by_probe) == 1 and seen_by_probe[0] is config  # once, on the file as written
    assert config.gateway.jwt is None and derived.gateway.jwt is not None  # the gateway hook ran too
    assert derived.probe is not config.probe


# -- redis and revocations moved to the top level ----------------------------------------------------


def test_top_level_redis_and_revocations() -> None:
    text = (
        "trust_domain: shop.local\nredis: {url: 'redis://127.0.0.1:6379/0'}\nrevocations: {storage: redis}\n"
    )
    config = parse_config(text).config
    assert (config.redis.url, config.revocations.storage) == ("redis://127.0.0.1:6379/0", "redis")


def test_the_old_keys_say_where_they_moved() -> None:
    text = (
        "trust_domain: shop.local\ngateway:\n  redis: {url: 'redis://x'}\n  revocations: {storage: redis}\n"
    )
    assert problems(text) == [
        Problem(
            "gateway.redis",
            "`gateway.redis` moved to the top level: write `redis:` next to `trust_domain:`",
            3,
        ),
        Problem(
            "gateway.revocations",
            "`gateway.revocations` moved to the top level: write `revocations:` next to `trust_domain:`",
            4,
        ),
    ]


def test_an_old_key_is_reported_with_the_other_sections_problems() -> None:
    found = problems("gateway:\n  revocations: {}\nidentity: {listen: nowhere}\n")
    assert sorted(p.path for p in found) == ["gateway.revocations", "identity.listen"]


def test_the_old_key_error_without_the_loader() -> None:
    with pytest.raises(ValidationError, match=r"`gateway\.redis` moved to the top level"):
        GarrisonConfig.model_validate({"gateway": {"redis": {"url": "redis://x"}}})


def test_check_prints_where_the_key_moved(tmp_path: Path) -> None:
    path = tmp_path / "garrison.yaml"
    path.write_text("gateway:\n  redis: {url: 'redis://127.0.0.1:6379/0'}\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["check", "-c", str(path)])
    assert result.exit_code == 1
    assert "garrison.yaml:2: gateway.redis: `gateway.redis` moved to the top level" in result.output


def test_redis_storage_anywhere_needs_the_top_level_url() -> None:
    text = "gateway: {blocklist: {storage: redis}}\nrevocations: {storage: redis}\n"
    assert [(p.path, p.message) for p in problems(text)] == [
        ("gateway.blocklist.storage", "storage `redis` needs `redis.url`"),
        ("revocations.storage", "storage `redis` needs `redis.url`"),
    ]


def test_a_reload_that_changes_the_shared_stores_asks_for_a_restart() -> None:
    from types import SimpleNamespace

    from garrison.gateway.server import GatewayServer

    old = SimpleNamespace(config=parse_config("").config)
    new = SimpleNamespace(
        config=parse_config(
            "redis: {url: 'redis://127.0.0.1:6379/0'}\nrevocations: {max_entries: 5}\n"
        ).config
    )
    message = GatewayServer._needs_restart(old, new)  # type: ignore[arg-type]
    assert message == "changes to revocations, redis take effect after a restart"
    assert GatewayServer._needs_restart(old, old) == ""  # type: ignore[arg-type]
