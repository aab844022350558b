"""``audit.shipping``: what the loader accepts and refuses, the warnings it gives, the paths it resolves,
and how credential files are read (never inline, never readable by others, never in a repr)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from ship_receivers import secret_file

from garrison.audit.ship.receiver import Credentials, ShippingSetupError
from garrison.audit.ship.service import ShippingService, install
from garrison.config.audit_shipping import ShipperAuth, ShippingConfig
from garrison.config.loader import ConfigError, parse_config
from garrison.core.runner import StartFailed

BASE = """
trust_domain: shop.local
state_dir: state
audit:
  shipping:
    shippers:
"""


def shippers(*lines: str) -> str:
    return BASE + "".join(f"      {line}\n" for line in lines)


def test_a_valid_file_resolves_credential_and_ca_paths_against_its_directory(tmp_path: Path) -> None:
    text = shippers(
        "- {name: loki, type: loki, url: 'https://loki:3100', tenant: acme, labels: {env: prod},",
        "   auth: {username: garrison, password_file: secrets/loki.pw}, tls: {ca_file: ca.pem}}",
        "- {name: es, type: elasticsearch, url: 'https://es:9200', auth: {api_key_file: /etc/es.key}}",
        "- {name: otel, type: otlp, url: 'https://otel:4318', auth: {bearer_token_file: otel.token}}",
    )
    loaded = parse_config(text, base_dir=tmp_path)
    assert loaded.config.audit is not None
    loki, es, otel = loaded.config.audit.shipping.shippers
    assert loki.auth.password_file == str(tmp_path / "secrets" / "loki.pw")
    assert loki.tls.ca_file == str(tmp_path / "ca.pem")
    assert es.auth.api_key_file == "/etc/es.key" and es.index == "garrison-audit-%Y.%m.%d"
    assert otel.auth.bearer_token_file == str(tmp_path / "otel.token")
    assert not [w for w in loaded.warnings if w.path.startswith("audit")]


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("- {name: a, type: loki, url: 'https://u:p@loki'}", "url"),
        ("- {name: a, type: loki, url: 'https://loki', labels: {component: x}}", "job/component/outcome"),
        ("- {name: a, type: loki, url: 'https://loki', auth: {username: u}}", "password_file"),
        (
            "- {name: a, type: otlp, url: 'https://o', auth: {bearer_token_file: t, api_key_file: k}}",
            "choose one",
        ),
        ("- {name: a, type: elasticsearch, url: 'https://es', index: 'Audit-%H'}", "index name"),
        ("- {name: a, type: kafka, url: 'https://k'}", "type"),
        ("- {name: a, type: loki, url: 'https://l', password: hunter2}", "password"),
    ],
)
def test_bad_shippers_are_refused_with_a_clear_error(tmp_path: Path, line: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(shippers(line), base_dir=tmp_path)
    assert complaint in str(error.value)


def test_names_are_unique() -> None:
    same = {"name": "x", "type": "loki", "url": "https://l"}
    with pytest.raises(ValidationError, match="unique"):
        ShippingConfig.model_validate({"shippers": [same, same]})


def test_plaintext_and_unverified_receivers_are_warned_about(tmp_path: Path) -> None:
    text = shippers(
        "- {name: a, type: loki, url: 'https://l', tls: {insecure_skip_verify: true}}",
        "- {name: b, type: otlp, url: 'http://o', auth: {bearer_token_file: t}}",
    )
    warnings = [problem.message for problem in parse_config(text, base_dir=tmp_path).warnings]
    assert any("'a' does not verify" in warning for warning in warnings)
    assert any("'b' sends credentials and the audit log in plaintext" in warning for warning in warnings)


def test_credential_files_are_read_only_when_private_and_never_shown(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    token.chmod(0o644)
    auth = ShipperAuth(bearer_token_file=str(token))
    with pytest.raises(ShippingSetupError, match="chmod 600") as error:
        Credentials(auth)
    assert "s3cret" not in str(error.value)
    token.chmod(0o600)
    credentials = Credentials(auth)
    assert credentials.headers() == {"Authorization": "Bearer s3cret-token"}
    assert "s3cret" not in repr(credentials)
    missing = ShipperAuth(api_key_file=str(tmp_path / "absent"))
    with pytest.raises(ShippingSetupError, match="absent"):
        Credentials(missing)


def test_install_joins_the_collector_and_a_missing_credential_file_fails_its_start(tmp_path: Path) -> None:
    text = shippers("- {name: es, type: elasticsearch, url: 'https://es', auth: {api_key_file: es.key}}")
    loaded = parse_config(text, base_dir=tmp_path)
    host = SimpleNamespace(
        loaded=loaded, registry=CollectorRegistry(auto_describe=True), stages=[], background=[]
    )
    with pytest.raises(StartFailed, match=r"es\.key"):
        asyncio.run(install(host))  # type: ignore[arg-type]
    assert not host.stages and not host.background
    secret_file(tmp_path / "es.key", "a2V5")
    asyncio.run(install(host))  # type: ignore[arg-type]
    (service,) = host.stages
    assert isinstance(service, ShippingService) and host.background == [service.run]
    assert host.registry.get_sample_value("garrison_audit_ship_lag_entries", {"shipper": "es"}) == 0
    empty = SimpleNamespace(
        loaded=parse_config(BASE + "      []\n", base_dir=tmp_path), stages=[], background=[]
    )
    asyncio.run(install(empty))  # type: ignore[arg-type]
    assert not empty.stages and not empty.background
